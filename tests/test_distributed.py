"""torchrun training (DDP and FSDP over gloo on the CPU), gradient accumulation and resume with
another world size: the same global batch gives the same losses whatever the split.

Tolerance: losses within 1e-5 (relative) and parameters within 1e-5 (absolute) of the
one-process run; gradients averaged over ranks sum in another order, nothing else differs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.config import compose
from ditpolicy.policies import batch_random
from ditpolicy.policies.checkpoint import load_policy
from ditpolicy.policies.train import Trainer

PROBE = str(Path(__file__).with_name("dist_probe.py"))
STEPS = 6
RTOL, ATOL = 1e-5, 1e-5


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "reach.zarr"
    write_reaching_store(path, episodes=6, length=24, image=True)
    return path


def overrides(store, run_dir, *extra):
    return [f"dataset.path={store}", f"run_dir={run_dir}", "dataset.obs_keys=[state,rgb_cam]", *TINY_POLICY,
            f"train.steps={STEPS}", "train.log_every=1", "train.keep_checkpoints=5", *extra]


@pytest.fixture(scope="module")
def single(store, tmp_path_factory):
    """The one-process reference: losses and final parameters of STEPS steps."""
    root = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, PROBE, str(root / "single.json"), str(STEPS),
                    *overrides(store, root / "run")], check=True, capture_output=True, timeout=300)
    return json.loads((root / "single.json").read_text())


def test_draws_inside_a_shard_are_rows_of_the_whole_batch():
    with batch_random.shard_of_batch(7, 0, 16, 16):
        whole = batch_random.randn((16, 3))
        whole_frames = batch_random.randint(0, 9, (32,))        # (B * T) frames of B = 16 samples, T = 2
    with batch_random.shard_of_batch(7, 4, 8, 16):
        part = batch_random.randn((4, 3))
        part_frames = batch_random.randint(0, 9, (8,))
    assert torch.equal(part, whole[4:8])
    assert torch.equal(part_frames, whole_frames[8:16])
    assert not batch_random.in_shard()
    assert batch_random.randn((4, 3)).shape == (4, 3)            # plain draw outside a step
    with pytest.raises(ValueError, match="do not lie in a batch of 16"):
        with batch_random.shard_of_batch(7, 8, 20, 16):
            pass


def test_gradient_accumulation_matches_the_whole_batch(store, tmp_path):
    runs = {}
    for accum in (1, 4):
        trainer = Trainer(compose("train", overrides(store, tmp_path / f"a{accum}", f"train.grad_accum={accum}")))
        losses = [trainer.train_step()["loss"] for _ in range(3)]
        runs[accum] = losses, torch.cat([p.detach().reshape(-1) for p in trainer.policy.parameters()])
    np.testing.assert_allclose(runs[4][0], runs[1][0], rtol=RTOL)
    assert float((runs[4][1] - runs[1][1]).abs().max()) < ATOL
    assert runs[1][0][0] != runs[1][0][1]                          # the steps really differ


def test_global_batch_must_split_evenly(store, tmp_path):
    out = subprocess.run([sys.executable, "-m", "ditpolicy", "train",
                          *overrides(store, tmp_path / "run", "train.grad_accum=3")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "train.batch_size=32 (the global batch) must split evenly over 1 process(es) x train.grad_accum=3" \
        in out.stderr


def test_two_process_ddp_keeps_ranks_identical_and_matches_one_process(store, single, tmp_path):
    torchrun(PROBE, str(tmp_path / "ddp.json"), str(STEPS), *overrides(store, tmp_path / "run"))
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["rank_spread"] == [0.0] * STEPS                    # every rank holds the same weights after each step
    np.testing.assert_allclose(ddp["loss"], single["loss"], rtol=RTOL)
    assert np.abs(np.asarray(ddp["params"]) - np.asarray(single["params"])).max() < ATOL
    assert len(set(np.round(single["loss"], 6))) == STEPS          # a curve, not a constant


def test_fsdp_checkpoint_resumes_in_one_process(store, single, tmp_path):
    """Two FSDP processes train half the run; one process resumes it and ends where the
    uninterrupted one-process run ends."""
    run = tmp_path / "run"
    args = overrides(store, run, "train.distributed.strategy=fsdp")
    torchrun(PROBE, str(tmp_path / "fsdp.json"), str(STEPS // 2), *args)
    fsdp = json.loads((tmp_path / "fsdp.json").read_text())
    np.testing.assert_allclose(fsdp["loss"], single["loss"][:STEPS // 2], rtol=RTOL)
    out = subprocess.run([sys.executable, "-m", "ditpolicy", "train", *args, "resume=true"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "WORLD_SIZE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step_{STEPS // 2:07d} at step {STEPS // 2}" in out.stdout
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(STEPS // 2 + 1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in resumed], single["loss"][STEPS // 2:], rtol=RTOL)
    final = load_policy(run / "checkpoints" / f"step_{STEPS:07d}", use_ema=False)
    params = torch.cat([p.detach().reshape(-1).double() for p in final.parameters()]).numpy()
    assert np.abs(params - np.asarray(single["params"])).max() < ATOL
