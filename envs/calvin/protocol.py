"""CALVIN's evaluation protocol over the chains of chains.py.

Each chain: the scene is reset once, to the chain's initial state; then each subtask in turn
gets at most ``SUBTASK_STEPS`` (360) steps and succeeds as soon as the task oracle, comparing
the scene at the subtask's start with the current one, reports it; the chain stops at the
first failure. A chain's result is its number of consecutive successes (0-5).

Reported: the average length (mean result), success@k for k = 1..5 (the share of chains
whose result is at least k), and per subtask its successes and attempts (a chain's completed
prefix counts as successes, the subtask it failed on as one failure; later ones are not
attempted). Every finished chain is appended at once, with the chain itself, to a JSONL file:
a killed evaluation started again with the same file runs only the chains it lacks.

The simulator side is a ``runner`` with ``reset(initial_state)`` and ``run_subtask(subtask,
max_steps) -> bool`` (an adapter over CALVIN's own environment and oracle, or a test double).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from .chains import CHAIN_LENGTH

SUBTASK_STEPS = 360


def run_chain(runner, initial_state: dict, chain: list[str], max_steps: int = SUBTASK_STEPS) -> int:
    """Consecutive successes of one chain, stopping at the first failure."""
    runner.reset(initial_state)
    for done, subtask in enumerate(chain):
        if not runner.run_subtask(subtask, max_steps):
            return done
    return len(chain)


def summarize(rows: list[dict]) -> dict:
    """Average length, success@1..5 and per-subtask success of finished chains."""
    results = np.array([r["result"] for r in rows], dtype=int)
    per_subtask: dict[str, list[int]] = {}
    for row in rows:
        for k, subtask in enumerate(row["tasks"][: row["result"] + 1]):
            counts = per_subtask.setdefault(subtask, [0, 0])
            counts[0] += int(k < row["result"])
            counts[1] += 1
    return {"chains": len(rows), "average_length": float(results.mean()) if len(rows) else 0.0,
            "success_at": {k: float((results >= k).mean()) if len(rows) else 0.0 for k in range(1, CHAIN_LENGTH + 1)},
            "subtasks": {name: {"successes": s, "attempts": n, "success_rate": s / n}
                         for name, (s, n) in sorted(per_subtask.items())}}


def evaluate_chains(runner, chains: list[tuple[dict, list[str]]], results: str | Path | None = None,
                    max_steps: int = SUBTASK_STEPS, progress: bool = True) -> dict:
    """Run every chain (those already in ``results`` are skipped); returns ``summarize``."""
    path = Path(results) if results is not None else None
    rows = []
    if path is not None and path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finished = {r["chain"] for r in rows}
    bar = progress_bar(total=len(chains), initial=len(finished), desc="calvin chains", unit="chain",
                       disable=not progress)
    for index, (initial_state, chain) in enumerate(chains):
        if index in finished:
            continue
        row = {"chain": index, "initial_state": initial_state, "tasks": list(chain),
               "result": run_chain(runner, initial_state, chain, max_steps)}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
        bar.update(1)
        bar.set_postfix(avg_len=f"{np.mean([r['result'] for r in rows]):.2f}", refresh=False)
    bar.close()
    return summarize(sorted(rows, key=lambda r: r["chain"]))
