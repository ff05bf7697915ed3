"""The DiT policy: learning, checkpoints that reproduce predictions (also those written before
denoiser families), clear checkpoint errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ditpolicy.config import compose
from ditpolicy.policies import CheckpointError, Policy
from ditpolicy.policies.train import Trainer

LEGACY = Path(__file__).parent / "fixtures" / "legacy_dit_checkpoint"


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
    assert meta["step"] == 20 and meta["policy_type"] == "diffusion" and meta["denoiser"] == "dit"
    assert meta["data"]["episodes"] == 6
    a = Policy.from_checkpoint(checkpoint, device="cpu")
    b = Policy.from_checkpoint(latest, device="cpu")
    batch = {"state": torch.randn(3, 2, 4), "task_id": torch.tensor([0, 1, 0])}
    for steps in (1, 4, 10):  # the sampler step count is chosen at inference
        pa = a.predict_action_chunks(batch, steps, generator=torch.Generator().manual_seed(0))
        pb = b.predict_action_chunks(batch, steps, generator=torch.Generator().manual_seed(0))
        assert pa.shape == (3, 8, 2)
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    b.reset(task="task1")
    chunk = b.predict_chunk({"state": np.zeros((2, 4), np.float32)})
    assert chunk.shape == (8, 2) and np.isfinite(chunk).all()


def test_saved_weights_are_the_trained_ema_weights(store, tmp_path):
    trainer = make_trainer(store, tmp_path / "run", "train.steps=12", "train.save_every=12")
    latest = trainer.run()
    saved_ema = load_file(str(latest / "ema.safetensors"))
    saved_model = load_file(str(latest / "model.safetensors"))
    assert saved_ema.keys() == trainer.ema.state.keys()
    for name, value in trainer.ema.state.items():
        assert torch.equal(saved_ema[name], value), name
        assert torch.equal(saved_model[name], trainer.policy.state_dict()[name]), name
    # the EMA differs from the raw weights after training, and loading takes the EMA
    assert any(not torch.equal(saved_ema[k], saved_model[k]) for k in saved_ema if saved_ema[k].is_floating_point())
    loaded = Policy.from_checkpoint(tmp_path / "run", device="cpu").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trainer.ema.state.items())


def test_checkpoint_written_before_denoiser_families_predicts_the_same():
    """A checkpoint of policy type 'dit' written by the previous release loads and predicts
    exactly what that release predicted (recorded beside it)."""
    expected = np.load(LEGACY / "expected.npz")
    policy = Policy.from_checkpoint(LEGACY, device="cpu", inference_mode="eager")
    assert policy.spec.denoiser["name"] == "dit" and policy.spec.goals == ["task"] and policy.spec.d_model == 16
    batch = {"state": torch.from_numpy(expected["state"]), "task_id": torch.from_numpy(expected["task_id"])}
    actions = policy.predict_action_chunks(batch, int(expected["steps"]),
                                           generator=torch.Generator().manual_seed(int(expected["seed"])))
    np.testing.assert_allclose(actions.numpy(), expected["actions"], atol=1e-5, rtol=0)


def test_observation_encoding_runs_once_per_chunk(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="eager")  # hooks see eager calls
    calls = {"encoder": 0, "denoiser": 0}
    policy.encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1))
    policy.denoiser.register_forward_hook(lambda *a: calls.__setitem__("denoiser", calls["denoiser"] + 1))
    policy.reset(task="task0")
    policy.predict_chunk({"state": np.zeros((2, 4), np.float32)}, steps=10)
    assert calls == {"encoder": 1, "denoiser": 10}


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
    meta["policy_type"] = "gpt"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="describes a 'gpt' policy, not a 'diffusion' policy"):
        Policy.from_checkpoint(other)

    other_family = copy("other_family")
    cfg = OmegaConf.load(other_family / "config.yaml")
    cfg.policy_spec.denoiser.name = "anchored"
    OmegaConf.save(cfg, other_family / "config.yaml")
    with pytest.raises(CheckpointError, match=r"other_family: config.yaml policy_spec: unknown denoiser 'anchored' "
                                              r"in policy.denoiser.name; known: dit"):
        Policy.from_checkpoint(other_family)

    typo = copy("typo")
    cfg = OmegaConf.load(typo / "config.yaml")
    cfg.policy_spec.denoiser.n_layer = 3
    OmegaConf.save(cfg, typo / "config.yaml")
    with pytest.raises(CheckpointError, match=r"typo: config.yaml policy_spec: policy.denoiser: unknown option\(s\) "
                                              r"\['n_layer'\] for the 'dit' denoiser"):
        Policy.from_checkpoint(typo)

    truncated = copy("truncated")
    data = (truncated / "ema.safetensors").read_bytes()
    (truncated / "ema.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated: ema.safetensors is not a readable safetensors file"):
        Policy.from_checkpoint(truncated)

    bad_meta = copy("bad_meta")
    (bad_meta / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad_meta: meta.json is not valid JSON"):
        Policy.from_checkpoint(bad_meta)

    run = tmp_path / "dangling_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").symlink_to("step_0000099")
    with pytest.raises(CheckpointError, match="latest: is a link to step_0000099, which does not exist"):
        Policy.from_checkpoint(run)


def test_image_policy_trains_and_predicts(tmp_path):
    path = tmp_path / "img.zarr"
    write_reaching_store(path, episodes=3, length=10, image=True)
    trainer = make_trainer(path, tmp_path / "run", "train.steps=3", "dataset.obs_keys=[state,rgb_cam]")
    assert trainer.spec.image_keys == ["rgb_cam"]
    logs = trainer.train_step()
    assert np.isfinite(logs["loss"]) and logs["grad_norm"] > 0
    policy = trainer.ema_policy()
    policy.reset(task="task1")
    policy.observe({"state": np.zeros(4, np.float32), "rgb_cam": np.zeros((32, 32, 3), np.uint8)})
    assert policy.select_action().shape == (2,)


@pytest.mark.parametrize("batch", [1, 3])
def test_traced_steps_match_eager(checkpoint, batch):
    eager = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="eager")
    traced = Policy.from_checkpoint(checkpoint, device="cpu", inference_mode="trace")
    obs = {"state": torch.randn(batch, 2, 4), "task_id": torch.zeros(batch, dtype=torch.long)}
    for steps in (1, 4):
        a = eager.predict_action_chunks(obs, steps, generator=torch.Generator().manual_seed(3))
        b = traced.predict_action_chunks(obs, steps, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # one graph of the per-chunk condition, and one of the whole sampler per step count
    assert sorted(key[0] for key in traced.fast_step._graphs) == ["prepare", "sample", "sample"]
    # a chunk that continues a previous one steps through a step graph, shared by its steps
    prefix = torch.randn(batch, 2, 2)
    a = eager.predict_action_chunks(obs, 4, generator=torch.Generator().manual_seed(3), prefix=prefix, delay=1)
    b = traced.predict_action_chunks(obs, 4, generator=torch.Generator().manual_seed(3), prefix=prefix, delay=1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(traced.fast_step._graphs) == 4
