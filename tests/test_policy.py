"""The DiT policy: learning, checkpoints that reproduce predictions, clear checkpoint errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store
from omegaconf import OmegaConf

from ditpolicy.cli import compose
from ditpolicy.policies.checkpoint import CheckpointError, Policy
from ditpolicy.policies.train import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reach.zarr"
    write_reaching_store(path)
    return path


def make_trainer(store, run_dir, *extra):
    return Trainer(compose("train", [f"dataset.path={store}", f"run_dir={run_dir}", *TINY_POLICY, *extra]))


@pytest.mark.parametrize("process", ["flow", "ddpm"])
def test_loss_decreases_on_a_tiny_store(store, tmp_path, process):
    trainer = make_trainer(store, tmp_path / "run", "train.steps=150", "train.save_every=1000",
                           f"policy/process={process}")
    assert trainer.policy.process.name == process
    losses = [trainer.train_step()["loss"] for _ in range(150)]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    make_trainer(store, run, "train.steps=20", "train.save_every=10", "dataset.val_fraction=0.2").run()
    return run


def test_checkpoint_layout_and_identical_predictions(checkpoint, store):
    latest = checkpoint / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == sorted([
        "config.yaml", "ema.safetensors", "meta.json", "model.safetensors", "normalizer.safetensors",
        "train_state.json", "train_state.safetensors"])
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["step"] == 20 and meta["policy_type"] == "dit" and meta["data"]["episodes"] == 6
    a = Policy.from_checkpoint(checkpoint, device="cpu")
    b = Policy.from_checkpoint(latest, device="cpu")
    obs = {"state": torch.randn(3, 2, 4)}
    ids = torch.tensor([0, 1, 0])
    for steps in (1, 4, 10):  # the sampler step count is chosen at inference
        pa = a.predict_action_chunks(obs, ids, steps, generator=torch.Generator().manual_seed(0))
        pb = b.predict_action_chunks(obs, ids, steps, generator=torch.Generator().manual_seed(0))
        assert pa.shape == (3, 8, 2)
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    b.reset(task="task1")
    chunk = b.predict_chunk({"state": np.zeros(4, np.float32)})
    assert chunk.shape == (8, 2) and np.isfinite(chunk).all()


def test_observation_encoding_runs_once_per_chunk(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="eager")  # hooks see eager calls
    calls = {"encoder": 0, "denoiser": 0}
    policy.encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1))
    policy.denoiser.register_forward_hook(lambda *a: calls.__setitem__("denoiser", calls["denoiser"] + 1))
    policy.predict_chunk({"state": np.zeros(4, np.float32)}, steps=10)
    assert calls == {"encoder": 1, "denoiser": 10}


def test_predict_chunk_names_bad_observations(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(KeyError, match=r"observation lacks keys \['state'\]"):
        policy.predict_chunk({"pos": np.zeros(4)})
    with pytest.raises(ValueError, match=r"observation 'state' has shape \(5,\), policy expects \(4,\)"):
        policy.predict_chunk({"state": np.zeros(5)})
    with pytest.raises(ValueError, match="task 'task7' is not one this policy was trained on"):
        policy.reset(task="task7")


def test_bad_checkpoint_directories_give_clear_errors(checkpoint, tmp_path):
    src = (checkpoint / "checkpoints" / "latest").resolve()

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    with pytest.raises(FileNotFoundError, match="does not exist"):
        Policy.from_checkpoint(tmp_path / "nothing")

    missing = copy("missing")
    (missing / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: missing ema.safetensors \(a checkpoint holds config.yaml"):
        Policy.from_checkpoint(missing)

    wrong = copy("wrong_shapes")
    cfg = OmegaConf.load(wrong / "config.yaml")
    cfg.policy_spec.obs_shapes.state = [6]
    OmegaConf.save(cfg, wrong / "config.yaml")
    with pytest.raises(CheckpointError, match=r"tensor 'encoder.lowdim.state.0.weight' has shape \(32, 4\), the config builds \(32, 6\)"):
        Policy.from_checkpoint(wrong)

    other = copy("other_policy")
    meta = json.loads((other / "meta.json").read_text())
    meta["policy_type"] = "moe"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="describes a 'moe' policy, not 'dit'"):
        Policy.from_checkpoint(other)

    other_cfg = copy("other_config")
    cfg = OmegaConf.load(other_cfg / "config.yaml")
    cfg.policy_spec.type = "anchored"
    OmegaConf.save(cfg, other_cfg / "config.yaml")
    with pytest.raises(CheckpointError, match="config.yaml describes a 'anchored' policy"):
        Policy.from_checkpoint(other_cfg)


def test_image_policy_trains_and_predicts(tmp_path):
    path = tmp_path / "img.zarr"
    write_reaching_store(path, episodes=3, length=10, image=True)
    trainer = make_trainer(path, tmp_path / "run", "train.steps=3", "dataset.obs_keys=[state,rgb_cam]")
    assert trainer.spec.image_keys == ["rgb_cam"]
    logs = trainer.train_step()
    assert np.isfinite(logs["loss"]) and logs["grad_norm"] > 0
    policy = trainer.ema_policy()
    chunk = policy.predict_chunk({"state": np.zeros(4, np.float32), "rgb_cam": np.zeros((32, 32, 3), np.uint8)})
    assert chunk.shape == (8, 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_traced_steps_match_eager(checkpoint, batch):
    eager = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="eager")
    traced = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="trace")
    obs = {"state": torch.randn(batch, 2, 4)}
    ids = torch.zeros(batch, dtype=torch.long)
    for steps in (1, 4):
        a = eager.predict_action_chunks(obs, ids, steps, generator=torch.Generator().manual_seed(3))
        b = traced.predict_action_chunks(obs, ids, steps, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(traced.fast_step._graphs) == 1  # one graph per input shape, reused across steps
