"""Training killed with SIGKILL resumes from its last checkpoint and ends where an
uninterrupted run ends: same step count, same weights."""

import os
import signal
import subprocess
import sys
import time

from helpers import TINY_POLICY, write_reaching_store
from safetensors.torch import load_file

STEPS, EVERY = 60, 10


def train_cmd(store, run_dir, *extra):
    return [sys.executable, "-m", "ditpolicy", "train", f"dataset.path={store}", f"run_dir={run_dir}",
            f"train.steps={STEPS}", f"train.save_every={EVERY}", "train.keep_checkpoints=20", *TINY_POLICY, *extra]


def saved_steps(run_dir):
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name.split("_")[1]) for p in ckpts.glob("step_*")) if ckpts.exists() else []


def latest_step(run_dir):
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.resolve().name.split("_")[1]) if latest.exists() else -1


def test_resume_after_sigkill_matches_the_uninterrupted_run(tmp_path):
    store = tmp_path / "reach.zarr"
    write_reaching_store(store)

    full = tmp_path / "full"
    subprocess.run(train_cmd(store, full), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(store, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and latest_step(killed) < 30:     # the step directory appears before `latest` moves
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = latest_step(killed)
    assert 30 <= step_at_kill < STEPS
    # no half-written checkpoint is ever visible as a step directory
    for step in saved_steps(killed):
        assert (killed / "checkpoints" / f"step_{step:07d}" / "meta.json").exists()

    out = subprocess.run(train_cmd(store, killed, "resume=true"), check=True, capture_output=True, text=True,
                         timeout=600)
    assert f"resumed from step_{step_at_kill:07d} at step {step_at_kill}" in out.stdout
    assert saved_steps(killed)[-1] == saved_steps(full)[-1] == STEPS
    final_full = full / "checkpoints" / f"step_{STEPS:07d}"
    final_resumed = killed / "checkpoints" / f"step_{STEPS:07d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(final_full / name)), load_file(str(final_resumed / name))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), f"{name}:{key} differs after resume"
