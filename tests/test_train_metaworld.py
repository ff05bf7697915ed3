"""End to end through the command line: collect expert demonstrations, train a small policy,
and solve an easy Meta-World task in real MuJoCo rollouts."""

import json
import subprocess
import sys

SMALL = ["policy.d_model=64", "policy.denoiser.n_layers=2", "policy.horizon=8", "policy.n_action_steps=4",
         "train.batch_size=64", "train.lr=1e-3", "train.warmup_steps=50", "train.progress=false",
         "train.val_every=0", "train.save_every=100000"]


def ditpolicy(*args):
    out = subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_short_training_solves_button_press(tmp_path):
    store, run = tmp_path / "demos.zarr", tmp_path / "run"
    ditpolicy("collect", "task=button-press-topdown", "episodes=20", f"out={store}")
    ditpolicy("train", f"dataset.path={store}", f"run_dir={run}", "train.steps=600", *SMALL)
    stdout = ditpolicy("eval", f"checkpoint={run}", "episodes=10", "num_envs=10", "env.max_episode_steps=200",
                       f"out={tmp_path / 'eval'}")
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["episodes"] == 10
    assert result["mean_success"] >= 0.8, stdout
    assert result["tasks"][0]["task"] == "button-press-topdown-v3"
    latency = result["chunk_latency_ms"]
    assert latency["p50"] > 0 and len(latency["warmup_ms"]) == 1   # the trace-building call is kept apart
    assert latency["p99"] < latency["warmup_ms"][0]
    assert (tmp_path / "eval" / "success.png").stat().st_size > 1000
    videos = list((tmp_path / "eval" / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert "button-press-topdown-v3" in stdout and "p99" in stdout
