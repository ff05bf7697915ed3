"""Training and evaluation refuse what they cannot do, with the key, file or step named."""

import subprocess
import sys

import pytest
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.config import compose
from ditpolicy.policies import CheckpointError
from ditpolicy.policies.train import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reach.zarr"
    write_reaching_store(path)
    return path


def ditpolicy(*args):
    return subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,message", [
    ("train.steps=-5", "train.steps must be a positive integer, got -5"),
    ("train.save_every=0", "train.save_every must be a positive integer, got 0"),
    ("train.batch_size=0", "train.batch_size must be a positive integer, got 0"),
    ("train.lr=abc", "train.lr must be a number, got 'abc'"),
    ("train.ema_decay=1.5", "train.ema_decay must be in [0.0, 1.0], got 1.5"),
    ("policy.horizon=0", "policy.horizon must be a positive integer, got 0"),
    ("policy.denoiser.n_layer=2", "policy.denoiser: unknown option(s) ['n_layer'] for the 'dit' denoiser"),
])
def test_bad_train_settings_name_the_key(store, tmp_path, override, message):
    out = ditpolicy("train", f"dataset.path={store}", f"run_dir={tmp_path / 'run'}", "train.progress=false",
                    f"+{override}" if "n_layer=" in override else override)
    assert out.returncode in (1, 2), out.stdout
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override,message", [
    ("episodes=-1", "episodes must be a positive integer, got -1"),
    ("num_envs=0", "num_envs must be a positive integer, got 0"),
    ("steps=0", "steps must be a positive integer, got 0"),
])
def test_bad_eval_settings_name_the_key(tmp_path, override, message):
    out = ditpolicy("eval", f"checkpoint={tmp_path}", override)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_divergence_stops_training_without_a_checkpoint(store, tmp_path):
    trainer = Trainer(compose("train", [f"dataset.path={store}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY,
                                        "train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=1e30",
                                        "train.steps=50", "train.save_every=50"]))
    with pytest.raises(TrainingDiverged, match=r"step \d+: (loss|gradient norm) is (nan|inf).*the batch drew from "
                                               r"episodes \[.*\] of .*reach.zarr"):
        trainer.run()
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))


def test_resume_with_other_model_settings_names_the_file_and_tensor(store, tmp_path):
    run = tmp_path / "run"
    Trainer(compose("train", [f"dataset.path={store}", f"run_dir={run}", *TINY_POLICY, "train.steps=2",
                              "train.save_every=2"])).run()
    wider = compose("train", [f"dataset.path={store}", f"run_dir={run}", *TINY_POLICY, "policy.d_model=64",
                              "train.steps=4", "resume=true"])
    with pytest.raises(CheckpointError, match=r"step_0000002: cannot resume: model.safetensors tensor '.*' has shape "
                                              r"\(.*\), the config builds \(.*\)"):
        Trainer(wider)


def test_a_killed_save_leaves_nothing_behind_after_the_next_save(store, tmp_path):
    run = tmp_path / "run"
    stale = run / "checkpoints" / ".step_0000001.tmp-99999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    Trainer(compose("train", [f"dataset.path={store}", f"run_dir={run}", *TINY_POLICY, "train.steps=2",
                              "train.save_every=2"])).run()
    assert not stale.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]


def test_a_non_finite_checkpoint_is_never_written(store, tmp_path):
    from ditpolicy.policies.checkpoint import save_checkpoint

    trainer = Trainer(compose("train", [f"dataset.path={store}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY]))
    ema = {k: v.clone() for k, v in trainer.ema.state.items()}
    ema["denoiser.action_out.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not written: ema.safetensors tensor 'denoiser.action_out.bias' "
                                              r"holds NaN/inf"):
        save_checkpoint(tmp_path / "ckpt", trainer.policy, ema, trainer.cfg, {"step": 0})
    assert not (tmp_path / "ckpt").exists()
