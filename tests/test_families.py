"""The seams that denoiser families plug into.

A second family (tests/plugins/mlp_family.py plus its yaml) lives outside the package: it
trains, checkpoints and evaluates through the unchanged CLI, with an extra output head and a
named loss term of its own. Beside it: per-token noise levels in the DiT, goal tokens of any
kind and number, tracing of any family's step, and clear errors for unknown families,
options and unweighted loss terms.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ditpolicy.config import compose, policy_config
from ditpolicy.datasets import Normalizer
from ditpolicy.datasets.stats import array_stats
from ditpolicy.policies import DENOISERS, DiffusionPolicy, DiTDenoiser, Policy, PolicySpec
from ditpolicy.policies.dit import modulate, timestep_embedding
from ditpolicy.policies.fast_step import FastStep
from ditpolicy.policies.goals import GoalEncoder

PLUGINS = Path(__file__).parent / "plugins"
SEARCHPATH = f"hydra.searchpath=[file://{PLUGINS / 'configs'}]"


def ditpolicy(*args, plugins=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS) if plugins else "",
                                                                    os.environ.get("PYTHONPATH", "")])))
    return subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_a_family_outside_the_package_trains_checkpoints_and_evaluates_through_the_cli(tmp_path):
    store, run, out = tmp_path / "reach.zarr", tmp_path / "run", tmp_path / "eval"
    done = ditpolicy("collect", "task=reach", "episodes=3", f"out={store}")
    assert done.returncode == 0, done.stderr
    done = ditpolicy("train", SEARCHPATH, "policy/denoiser=mlp", f"dataset.path={store}", f"run_dir={run}",
                     "train.steps=40", "train.save_every=40", "train.batch_size=16", "train.progress=false",
                     "train.val_every=0", "train.log_every=10", "policy.d_model=32")
    assert done.returncode == 0, done.stderr
    latest = run / "checkpoints" / "latest"
    assert '"denoiser": "mlp"' in (latest / "meta.json").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/loss/diffusion", "train/loss/smoothness"} <= set(tags)
    terms = {tag: events.Scalars(tag)[-1].value for tag in ("train/loss", "train/loss/diffusion",
                                                              "train/loss/smoothness")}
    assert terms["train/loss"] == pytest.approx(terms["train/loss/diffusion"] + 0.01 * terms["train/loss/smoothness"],
                                                rel=1e-4)

    done = ditpolicy("eval", f"checkpoint={run}", "episodes=2", "num_envs=2", "env.max_episode_steps=24", "videos=0",
                     f"out={out}")
    assert done.returncode == 0, done.stderr
    assert '"episodes": 2' in (out / "result.json").read_text()

    # without the family's module on the path, loading names the module it needs
    done = ditpolicy("eval", f"checkpoint={run}", "episodes=1", plugins=False)
    assert done.returncode == 1
    assert "cannot import 'mlp_family' for denoiser 'mlp'" in done.stderr and "checkpoint" in done.stderr


@pytest.fixture(scope="module")
def mlp_family():
    sys.path.insert(0, str(PLUGINS))
    import mlp_family
    yield mlp_family
    sys.path.remove(str(PLUGINS))


def small_policy(denoiser: dict, goals=("task",), goal_shapes=None) -> DiffusionPolicy:
    cfg = policy_config(["policy.d_model=32", "policy.horizon=6", "policy.n_action_steps=3"])
    cfg["denoiser"], cfg["goals"] = denoiser, list(goals)
    spec = PolicySpec.from_config(cfg, {"state": [5]}, [], 2, ["a", "b"], goal_shapes=goal_shapes)
    rng = np.random.default_rng(0)
    stats = {"state": array_stats(rng.normal(size=(50, 5))), "action": array_stats(rng.normal(size=(50, 2)))}
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()


def test_loss_terms_are_named_weighted_and_each_needs_a_weight(mlp_family):
    policy = small_policy({"name": "mlp", "hidden": 16, "loss_weights": {"smoothness": 0.5}})
    batch = {"state": torch.randn(8, 2, 5), "task_id": torch.zeros(8, dtype=torch.long), "action": torch.randn(8, 6, 2)}
    torch.manual_seed(0)
    loss, logs = policy.compute_loss(batch)
    assert set(logs) == {"loss", "loss/diffusion", "loss/smoothness"}
    assert logs["loss"] == pytest.approx(logs["loss/diffusion"] + 0.5 * logs["loss/smoothness"], rel=1e-5)
    unweighted = small_policy({"name": "mlp", "hidden": 16})
    with pytest.raises(ValueError, match=r"loss term\(s\) \['smoothness'\] have no weight: set "
                                         r"policy.loss_weights.smoothness"):
        unweighted.compute_loss(batch)


def test_extra_heads_come_back_and_tracing_handles_dict_outputs(mlp_family):
    policy = small_policy({"name": "mlp", "hidden": 16})
    batch = {"state": torch.randn(3, 2, 5), "task_id": torch.tensor([0, 1, 1])}
    eager, heads = policy.predict_action_chunks(batch, 3, generator=torch.Generator().manual_seed(1), return_heads=True)
    assert heads["energy"].shape == (3,)
    policy.set_inference_mode("trace")
    traced, traced_heads = policy.predict_action_chunks(batch, 3, generator=torch.Generator().manual_seed(1),
                                                        return_heads=True)
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traced_heads["energy"], heads["energy"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("process", ["flow", "ddpm"])
def test_a_chunk_can_start_from_given_actions_with_a_clean_prefix(process):
    """``init`` + per-token ``t_start``: the prefix at level 0 comes back as given (the
    committed actions of real-time chunking), the rest is sampled from its own level."""
    cfg = policy_config([f"policy/process={process}", "policy.d_model=32", "policy.horizon=6",
                         "policy.n_action_steps=3", "policy.denoiser.n_layers=1", "policy.denoiser.n_heads=2"])
    spec = PolicySpec.from_config(cfg, {"state": [5]}, [], 2, ["a"])
    stats = {"state": array_stats(np.random.default_rng(0).normal(size=(50, 5))),
             "action": array_stats(np.random.default_rng(1).uniform(-2, 2, size=(50, 2)))}
    policy = DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()
    batch = {"state": torch.randn(2, 2, 5), "task_id": torch.zeros(2, dtype=torch.long)}
    init = torch.rand(2, 6, 2) * 2 - 1
    t_start = torch.ones(2, 6)
    t_start[:, :2] = 0.0
    out = policy.predict_action_chunks(batch, 4, init=init, t_start=t_start)
    torch.testing.assert_close(out[:, :2], init[:, :2], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, 2:], init[:, 2:], atol=1e-3)
    same = policy.predict_action_chunks(batch, 3, init=init, t_start=0.0)   # everything given clean
    torch.testing.assert_close(same, init, atol=1e-5, rtol=0)


def test_dit_takes_one_noise_level_per_token():
    torch.manual_seed(0)
    dit = DiTDenoiser(action_dim=3, horizon=5, d_model=32, n_layers=2, n_heads=4, mlp_ratio=2.0, dropout=0.0).eval()
    for p in dit.parameters():  # leave adaLN-Zero's closed start so that t matters
        torch.nn.init.normal_(p, std=0.2)
    prepared = dit.prepare(torch.randn(2, 4, 32))
    x = torch.randn(2, 5, 3)
    t = torch.tensor([0.3, 0.8])
    per_sample = dit(x, t, prepared)
    torch.testing.assert_close(dit(x, t[:, None].expand(2, 5), prepared), per_sample, atol=1e-6, rtol=1e-6)
    mixed = t[:, None].expand(2, 5).clone()
    mixed[:, 0] = 0.0
    assert not torch.allclose(dit(x, mixed, prepared), per_sample)
    # the traced step is specialised per level shape and agrees with eager for both
    step = FastStep(dit, "trace").bind(prepared)
    torch.testing.assert_close(step(x, mixed), dit(x, mixed, prepared), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step(x, t), per_sample, atol=1e-5, rtol=1e-5)


def test_a_cascaded_dit_refines_its_estimate_with_the_same_weights():
    def dit(cascade):
        torch.manual_seed(0)
        model = DiTDenoiser(action_dim=3, horizon=5, d_model=32, n_layers=2, n_heads=4, mlp_ratio=2.0, dropout=0.0,
                            cascade=cascade, heads=("score",)).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        return model

    one, two = dit(1), dit(2)
    assert [n for n, _ in one.named_parameters()] == [n for n, _ in two.named_parameters()]   # shared weights
    prepared = one.prepare(torch.randn(2, 4, 32))
    x, t = torch.randn(2, 5, 3), torch.tensor([0.3, 0.8])
    first, refined = one(x, t, prepared), two(x, t, prepared)
    assert refined["score"].shape == (2,)
    assert not torch.allclose(first["prediction"], refined["prediction"])
    # the second pass starts from the first pass's tokens plus its estimate, and adds a correction
    c = two.time_mlp(timestep_embedding(t, 32)) + prepared["pooled"]
    h = two.action_in(x) + two.position
    for block, kv in zip(two.blocks, prepared["kv"]):
        h = block(h, c, kv)
    h = h + two.action_in(first["prediction"])
    for block, kv in zip(two.blocks, prepared["kv"]):
        h = block(h, c, kv)
    shift, scale = two.final_ada(c).chunk(2, dim=-1)
    correction = two.action_out(modulate(two.final_norm(h), shift, scale))
    torch.testing.assert_close(refined["prediction"], first["prediction"] + correction, atol=1e-5, rtol=1e-5)
    step = FastStep(two, "trace").bind(prepared)
    torch.testing.assert_close(step(x, t)["prediction"], refined["prediction"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cascade must be >= 1"):
        DiTDenoiser(action_dim=3, horizon=5, d_model=32, n_layers=1, n_heads=4, mlp_ratio=2.0, dropout=0.0,
                    cascade=0)


def test_goal_tokens_of_any_kind_and_number():
    goals = GoalEncoder(["task", "language", "image"], d_model=16, n_tasks=3, language_dim=8, image_widths=(8, 8))
    inputs = {"task_id": torch.tensor([2, 0]), "language": torch.randn(2, 8),
              "goal_image": torch.randint(0, 255, (2, 3, 24, 24, 3), dtype=torch.uint8)}
    assert goals(inputs).shape == (2, 1 + 1 + 3, 16)                  # 3 goal images -> 3 tokens
    inputs["language"] = torch.randn(2, 4, 8)                         # 4 language tokens
    assert goals(inputs).shape == (2, 1 + 4 + 3, 16)
    with pytest.raises(KeyError, match="goal input 'language' is missing"):
        goals({"task_id": torch.tensor([0]), "goal_image": inputs["goal_image"][:1]})
    with pytest.raises(ValueError, match=r"policy.goals: unknown goal kind\(s\) \['smell'\]"):
        GoalEncoder(["smell"], 16, 3, 8, (8,))
    # a policy with language goals reads them at reset and in batches
    policy = small_policy({"name": "dit", "n_layers": 1, "n_heads": 2, "mlp_ratio": 2.0, "dropout": 0.0},
                          goals=["task", "language"], goal_shapes={"language": [8]})
    policy.reset(task="b", language=np.ones(8, np.float32))
    policy.observe({"state": np.zeros(5, np.float32)})
    assert policy.select_action().shape == (2,)
    none = small_policy({"name": "dit", "n_layers": 1, "n_heads": 2, "mlp_ratio": 2.0, "dropout": 0.0}, goals=[])
    none.reset()
    none.observe({"state": np.zeros(5, np.float32)})
    assert none.select_action().shape == (2,)


def test_unknown_families_and_options_are_named():
    with pytest.raises(ValueError, match=r"unknown denoiser 'unet' in policy.denoiser.name; known: .*dit"):
        DENOISERS.get("unet")
    with pytest.raises(ValueError, match=r"policy.denoiser: unknown option\(s\) \['layers'\] for the 'dit' "
                                         r"denoiser \(options: n_layers, n_heads, mlp_ratio, dropout, cascade\)"):
        small_policy({"name": "dit", "layers": 2, "n_heads": 2, "mlp_ratio": 2.0, "dropout": 0.0})
    with pytest.raises(ValueError, match=r"policy.denoiser.module: cannot import 'no_such_module'"):
        DENOISERS.get("x", "no_such_module")
    cfg = compose("train", ["dataset.path=x", SEARCHPATH, "policy/denoiser=mlp"])
    assert cfg.policy.denoiser.module == "mlp_family" and cfg.policy.process.name == "flow"
    with pytest.raises(Exception, match="denoiser"):
        compose("train", ["dataset.path=x", "policy/denoiser=nothing"])


def test_spec_settings_are_checked_by_key():
    cfg = policy_config()
    with pytest.raises(ValueError, match="policy.horizon must be a positive integer, got 0"):
        PolicySpec.from_config({**cfg, "horizon": 0}, {"state": [5]}, [], 2, ["a"])
    with pytest.raises(ValueError, match="policy.n_action_steps=20 exceeds policy.horizon=16"):
        PolicySpec.from_config({**cfg, "n_action_steps": 20}, {"state": [5]}, [], 2, ["a"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        PolicySpec.from_config({**cfg, "colour": "red"}, {"state": [5]}, [], 2, ["a"])


def test_a_checkpoint_of_the_plugin_family_round_trips(mlp_family, tmp_path):
    from ditpolicy.policies.checkpoint import save_checkpoint

    policy = small_policy({"name": "mlp", "module": "mlp_family", "hidden": 16,
                           "loss_weights": {"smoothness": 0.01}})
    path = save_checkpoint(tmp_path / "ckpt", policy, policy.state_dict(), {"train": {}}, {"step": 0})
    loaded = Policy.from_checkpoint(path, device="cpu", inference_mode="eager")
    batch = {"state": torch.randn(2, 2, 5), "task_id": torch.tensor([1, 0])}
    a = policy.predict_action_chunks(batch, 2, generator=torch.Generator().manual_seed(4))
    b = loaded.predict_action_chunks(batch, 2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
