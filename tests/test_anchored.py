"""Truncated anchored diffusion: k-means anchors fitted from the store, saved with the policy,
the levels its sampler visits, its classification target, and a policy that learns with it."""

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.config import compose
from ditpolicy.policies import Policy
from ditpolicy.policies.processes import make_process
from ditpolicy.policies.processes.anchored import kmeans
from ditpolicy.policies.train import Trainer

ANCHORED = {"name": "anchored", "n_anchors": 3, "num_train_steps": 1000, "truncation": 50, "start_step": 8}


def anchored(**options):
    process = make_process({**ANCHORED, **options})
    process.make_state(horizon=2, action_dim=1)
    process.state.anchors.copy_(torch.tensor([-1.0, 0.0, 1.0])[:, None, None].expand(3, 2, 1))
    process.state.fitted.fill_(True)
    return process


def test_kmeans_finds_separated_clusters_and_is_reproducible():
    rng = np.random.default_rng(0)
    centres = np.array([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    points = np.concatenate([c + 0.1 * rng.normal(size=(200, 2)) for c in centres])
    found = kmeans(points, 3, seed=1)
    assert np.allclose(np.sort(found, axis=0), np.sort(centres, axis=0), atol=0.05)
    assert np.array_equal(kmeans(points, 3, seed=1), found)                 # same seed, same anchors
    with pytest.raises(ValueError, match="3 anchors need at least 3 training chunks"):
        kmeans(points[:2], 3, seed=0)


def test_the_sampler_visits_exactly_the_truncated_schedule():
    process = anchored()
    seen = []

    def denoiser(x, t):
        seen.append(t.tolist())
        return {"prediction": x, "score": torch.zeros(len(x))}

    for steps, expected in ((1, [9]), (2, [9, 1]), (3, [9, 5, 1]), (50, list(range(9, 0, -1)))):
        seen.clear()
        x, t0 = process.initial(torch.zeros(2, 2, 1))
        assert x.shape == (2 * 3, 2, 1) and t0 == pytest.approx(9 / 1000)
        process.sample(denoiser, x, t0, steps)
        assert [row[0] * 1000 for row in seen] == pytest.approx(expected)        # steps k = level * T - 1
        assert all(len(set(row)) == 1 for row in seen)                          # every anchor at one level
        assert process.levels(steps) == pytest.approx([j / 1000 for j in expected])
    assert float(process.alphas_cumprod[0]) == pytest.approx(1 - 0.00085)        # scaled-linear betas
    assert float(process.alphas_cumprod[-1]) == pytest.approx(0.00466, abs=1e-5)
    levels = process.draw_levels((4000,), "cpu", torch.float32)
    assert levels.min() == pytest.approx(1 / 1000) and levels.max() == pytest.approx(50 / 1000)


def test_training_noises_each_anchor_and_targets_the_nearest():
    process = anchored(classification="ce")
    x0 = torch.tensor([0.9, -0.8, 0.1])[:, None, None].expand(3, 2, 1).contiguous()     # nearest: 2, 0, 1
    assert process.nearest_anchor(x0).tolist() == [2, 0, 1]
    x_t, t, target = process.training_pair(x0, torch.full((3,), 0.001))
    assert x_t.shape == (9, 2, 1) and t.shape == (9,) and torch.equal(target, x0)
    anchors = process.state.anchors.repeat(3, 1, 1)
    assert (x_t - anchors).abs().max() < 0.2                                   # level 1: close to its anchor
    plans = torch.randn(3, 3, 2, 1)
    plans[torch.arange(3), torch.tensor([2, 0, 1])] = x0                      # positives exact, others not
    right = torch.full((3, 3), -5.0)
    right[torch.arange(3), torch.tensor([2, 0, 1])] = 5.0
    terms = process.loss_terms({"prediction": plans.reshape(9, 2, 1), "score": right.reshape(9)}, x0)
    assert terms["anchor_l1"].item() == pytest.approx(0.0, abs=1e-6)
    wrong = process.loss_terms({"prediction": plans.reshape(9, 2, 1), "score": -right.reshape(9)}, x0)
    assert terms["anchor_score"] < 0.01 < 5 < wrong["anchor_score"]
    focal = anchored().loss_terms({"prediction": plans.reshape(9, 2, 1), "score": right.reshape(9)}, x0)
    assert focal["anchor_score"] < anchored().loss_terms(
        {"prediction": plans.reshape(9, 2, 1), "score": -right.reshape(9)}, x0)["anchor_score"]


def test_sampling_returns_the_best_scored_plan_with_all_plans():
    process = anchored()

    def denoiser(x, t):                       # predicts the anchor itself; scores favour anchor 1
        return {"prediction": process.state.anchors.repeat(len(x) // 3, 1, 1),
                "score": torch.tensor([0.0, 3.0, 1.0]).repeat(len(x) // 3)}

    x, t0 = process.initial(torch.randn(2, 2, 1))
    best, heads = process.sample(denoiser, x, t0, 2)
    assert torch.equal(best, process.state.anchors[1].expand(2, 2, 1))
    assert heads["plans"].shape == (2, 3, 2, 1) and heads["scores"].shape == (2, 3)


@pytest.mark.parametrize("horizon,cascade", [(1, 1), (4, 1), (4, 2)])
def test_the_dit_gives_the_chains_of_a_sample_one_condition_exactly(horizon, cascade):
    """K chains folded into the token axis (one condition row, one level per sample) give what
    repeating the condition K times gives; a horizon of 1 takes the single-token attention."""
    from ditpolicy.policies.dit import DiTDenoiser
    torch.manual_seed(0)
    dit = DiTDenoiser(3, horizon, 32, 2, 4, 4.0, 0.0, cascade=cascade, heads=("score",)).eval()
    for p in dit.parameters():                 # adaLN-Zero starts closed: open every branch
        torch.nn.init.normal_(p, std=0.2)
    b, k = 3, 5
    prepared = dit.prepare(torch.randn(b, 4, 32))
    x, t = torch.randn(b * k, horizon, 3), torch.rand(b)
    shared = dit(x, t, prepared)
    repeated = dit(x, t.repeat_interleave(k), {"pooled": prepared["pooled"].repeat_interleave(k, 0),
                                               "kv": [(kk.repeat_interleave(k, 0), v.repeat_interleave(k, 0))
                                                      for kk, v in prepared["kv"]]})
    assert torch.allclose(shared["prediction"], repeated["prediction"], atol=1e-5)
    assert torch.allclose(shared["score"], repeated["score"], atol=1e-5)
    assert shared["prediction"].abs().mean() > 0.1               # not a trivially closed network
    with pytest.raises(ValueError, match="one shared level per row"):
        dit(x, t.repeat_interleave(k), prepared)
    if horizon == 1:
        attention, tokens = dit.blocks[0].self_attn, torch.randn(6, 1, 32)
        assert torch.allclose(attention.single_token(tokens), attention(tokens), atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchored")
    write_reaching_store(root / "reach.zarr", episodes=8, length=24)
    cfg = compose("train", [f"dataset.path={root / 'reach.zarr'}", f"run_dir={root / 'run'}", *TINY_POLICY,
                            "policy/process=anchored", "policy.process.n_anchors=8", "train.steps=300",
                            "train.save_every=300", "policy.goals=[]", "train.ema_decay=0.9"])
    trainer = Trainer(cfg)
    fitted = trainer.policy.process.state.anchors.clone()
    trainer.run()
    return trainer, fitted, root / "run"


def test_anchors_are_fitted_once_saved_and_loaded(trained):
    trainer, fitted, run = trained
    assert bool(trainer.policy.process.state.fitted) and fitted.abs().sum() > 0
    assert torch.equal(trainer.policy.process.state.anchors, fitted)          # training does not move them
    policy = Policy.from_checkpoint(run, device="cpu")
    assert torch.equal(policy.process.state.anchors, fitted)
    assert torch.equal(policy.state_dict()["process_state.anchors"], fitted)
    again = Trainer(trainer.cfg)                                              # same store and seed, same anchors
    assert torch.equal(again.policy.process.state.anchors, fitted)


def test_a_trained_anchored_policy_scores_the_right_anchor_and_refines_it(trained):
    """After 300 steps: the score picks the anchor nearest the truth far above chance (1/8), and
    the 2-step plans are much closer to the truth than the mean chunk or an unscored anchor."""
    trainer, _, run = trained
    policy = Policy.from_checkpoint(run, device="cpu")
    rows = np.arange(0, len(trainer.train_sampler), 7)
    batch = trainer.train_sampler.sample_batch(rows)
    obs = {"state": torch.as_tensor(batch["state"])}
    truth = torch.as_tensor(batch["action"])
    plans, heads = policy.predict_action_chunks(obs, steps=2, return_heads=True)
    assert plans.shape == truth.shape and heads["plans"].shape == (len(rows), 8, *truth.shape[1:])
    anchors = policy.normalizer.unnormalize("action", policy.process.state.anchors)
    to_anchors = ((truth[:, None] - anchors[None]) ** 2).mean(dim=(2, 3))                # (B, K)
    accuracy = (heads["scores"].argmax(dim=1) == to_anchors.argmin(dim=1)).float().mean()
    assert accuracy > 0.6, accuracy
    mean_chunk_error = ((truth - truth.mean(dim=0)) ** 2).mean()
    for steps in (1, 2):
        error = ((policy.predict_action_chunks(obs, steps=steps) - truth) ** 2).mean()
        assert error < 0.3 * mean_chunk_error and error < 0.1 * to_anchors.mean(), (steps, error, mean_chunk_error)


def test_anchored_settings_that_cannot_work_are_named(trained, tmp_path):
    trainer, _, run = trained
    policy = Policy.from_checkpoint(run, device="cpu")
    obs = {"state": torch.zeros(1, policy.spec.n_obs, 4)}
    with pytest.raises(ValueError, match="warm starts .* are not supported"):
        policy.predict_action_chunks(obs, init=torch.zeros(1, 8, 2), t_start=0.5)
    base = [f"dataset.path={trainer.cfg.dataset.path}", f"run_dir={tmp_path}", *TINY_POLICY, "policy/process=anchored"]
    with pytest.raises(ValueError, match="needs a denoiser with the head"):
        Trainer(compose("train", [*base, "policy/denoiser=mode"]))
    with pytest.raises(ValueError, match="prefix_delay_max=2 needs one denoising chain per sample"):
        Trainer(compose("train", [*base, "policy.prefix_delay_max=2"]))
    fresh = make_process(ANCHORED)
    fresh.make_state(horizon=2, action_dim=1)
    with pytest.raises(RuntimeError, match="anchors were never fitted"):
        fresh.initial(torch.zeros(1, 2, 1))
