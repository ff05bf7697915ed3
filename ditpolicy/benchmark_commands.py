"""``eval env=libero`` (a checkpoint on a LIBERO suite under the published protocol),
``collect env=libero`` (scripted LIBERO-Object demonstrations) and ``eval env=calvin`` (the
official chains on CALVIN's simulator)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .commands import eval_dir
from .settings import SettingError, flag, integer, number, optional_positive_int, positive_int


def run_libero_eval(cfg: DictConfig):
    """Success per task with 95% intervals; ``result.json`` and the resumable per-episode
    file (a killed evaluation run again with the same command continues)."""
    try:
        from .envs.libero.protocol import PolicyActor, evaluate_libero
        from .envs.libero.suites import STEP_LIMITS
    except ImportError as exc:
        raise SettingError(f"env=libero needs LIBERO's simulator: pip install -e '.[libero]' ({exc})") from None
    from .policies import Policy
    from .policies.distributed import resolve_device

    suite = str(cfg.env.suite)
    if suite not in STEP_LIMITS:
        raise SettingError(f"env.suite={suite!r}: the LIBERO suites are {sorted(STEP_LIMITS)}")
    policy = Policy.from_checkpoint(cfg.checkpoint, device=resolve_device(str(cfg.device)))
    if policy.spec.action_dim != 7:
        raise SettingError(f"{cfg.checkpoint}: LIBERO takes 7-D actions; this policy predicts {policy.spec.action_dim}")
    out = eval_dir(cfg)
    results = Path(cfg.env.results) if cfg.env.results else out / f"libero_{suite}.jsonl"
    tasks = OmegaConf.to_object(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else ([cfg.tasks] if cfg.tasks else None)
    actor = PolicyActor(policy, optional_positive_int(cfg, "n_action_steps"),
                        optional_positive_int(cfg, "steps"))
    try:
        result = evaluate_libero(actor, suite, tasks, trials=positive_int(cfg, "env.trials"),
                                 num_envs=positive_int(cfg, "num_envs"), results=results)
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    summary = {**result.as_dict(), "suite": suite, "results_file": str(results),
               "checkpoint": str(Path(cfg.checkpoint).resolve())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(result.table())
    print(f"results: {out / 'result.json'}\nepisodes: {results}")
    return result, out


def collect_libero_demos(cfg: DictConfig) -> int:
    """The privileged-state expert on every LIBERO-Object task (``task=all``) or those named."""
    try:
        from .envs.libero.collect import collect_libero
    except ImportError as exc:
        raise SettingError(f"env=libero needs LIBERO's simulator: pip install -e '.[libero]' ({exc})") from None
    suite = str(cfg.env.suite)
    if suite != "libero_object":
        raise SettingError(f"env.suite={suite!r}: the scripted expert covers libero_object's pick-and-place tasks")
    names = OmegaConf.to_object(cfg.task) if OmegaConf.is_list(cfg.task) else [cfg.task]
    tasks = None if names in (["all"], [None]) else [str(n) for n in names]
    try:
        reports = collect_libero(suite, tasks, positive_int(cfg, "episodes"), str(cfg.out), list(cfg.env.cameras),
                                 positive_int(cfg, "env.image_size"), flag(cfg, "env.objects"), integer(cfg, "seed", 0),
                                 number(cfg, "max_attempts_factor", above=0.0), flag(cfg, "overwrite"))
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    print(f"{'task':<60} {'had':>4} {'kept':>5} {'tries':>6} {'success':>8}")
    for r in reports:
        print(f"{r['task']:<60} {r['existing']:>4} {r['kept']:>5} {r['attempts']:>6} "
              f"{r['kept'] / max(r['attempts'], 1):>8.2f}")
    print(f"wrote {cfg.out}")
    return 0


def run_calvin_eval(cfg: DictConfig):
    """CALVIN's chains on its own simulator (calvin_env, installed from its repository):
    average length, success@1..5 and per-subtask success in ``result.json``; every finished
    chain in the resumable ``calvin_chains.jsonl``."""
    from .envs.calvin.chains import NUM_CHAINS, load_chains
    from .envs.calvin.protocol import evaluate_chains
    from .envs.calvin.runner import CalvinRunner, PolicyActor
    from .policies import Policy
    from .policies.distributed import resolve_device

    chains = positive_int(cfg, "env.chains")
    if chains > NUM_CHAINS:
        raise SettingError(f"env.chains={chains}: CALVIN's evaluation has {NUM_CHAINS} chains")
    policy = Policy.from_checkpoint(cfg.checkpoint, device=resolve_device(str(cfg.device)))
    if policy.spec.action_dim != 7:
        raise SettingError(f"{cfg.checkpoint}: CALVIN takes 7-D relative actions; this policy predicts "
                           f"{policy.spec.action_dim}")
    try:
        actor = PolicyActor(policy, None, optional_positive_int(cfg, "n_action_steps"),
                            optional_positive_int(cfg, "steps"), integer(cfg, "seed", 0))
        runner = CalvinRunner(actor, cameras=bool(actor.cameras))
    except (ImportError, ValueError) as exc:
        raise SettingError(str(exc)) from None
    out = eval_dir(cfg)
    results = Path(cfg.env.results) if cfg.env.results else out / "calvin_chains.jsonl"
    subtask_steps = positive_int(cfg, "env.subtask_steps")
    try:
        summary = evaluate_chains(runner, load_chains()[:chains], results, subtask_steps)
    finally:
        runner.close()
    summary = {**summary, "subtask_steps": subtask_steps,
               "results_file": str(results), "checkpoint": str(Path(cfg.checkpoint).resolve())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"average length {summary['average_length']:.2f} over {summary['chains']} chains; success@1..5 "
          + " ".join(f"{v:.2f}" for v in summary["success_at"].values()))
    print(f"results: {out / 'result.json'}\nchains: {results}")
    return summary, out
