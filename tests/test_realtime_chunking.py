"""Real-time chunking and warm start: the sampler keeps to the actions that still run.

Process estimates are checked as exact inverses; inpainting with weight 1 must return the
committed prefix exactly, for flow and DDPM; a clean prefix (training-time variant) is
held fixed; a warm start at a low level stays next to the plan it starts from; the chunk
schedule switches, blends, drops and holds as documented, and counts each.
"""

import numpy as np
import pytest
import torch

from ditpolicy.config import policy_config
from ditpolicy.datasets import Normalizer
from ditpolicy.deploy.scheduler import ChunkScheduler
from ditpolicy.deploy.simulated_delay import DelayedChunkExecutor
from ditpolicy.policies import DiffusionPolicy, PolicySpec
from ditpolicy.policies.control import ChunkExecutor
from ditpolicy.policies.inpainting import prefix_weights
from ditpolicy.policies.processes import DDPMProcess, FlowMatchingProcess

PROCESSES = {"flow": [], "ddpm": ["policy/process=ddpm"], "ddpm-sample": ["policy/process=ddpm",
                                                                           "policy.process.prediction=sample"]}


def make_policy(*overrides) -> DiffusionPolicy:
    spec = PolicySpec.from_config(policy_config(["policy.d_model=32", "policy.denoiser.n_layers=1",
                                                 "policy.denoiser.n_heads=2", *overrides]), {"state": [5]}, [], 3, ["a"])
    stats = {"state": {"min": -np.ones(5), "max": np.ones(5)}, "action": {"min": -2 * np.ones(3), "max": 2 * np.ones(3)}}
    torch.manual_seed(0)
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()


def batch_of(policy, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(b, policy.spec.n_obs, 5, generator=g), **policy.goal_inputs("a", b)}


@pytest.mark.parametrize("process", [FlowMatchingProcess("euler", "uniform"),
                                     DDPMProcess(100, "epsilon", 0.0, 1.0), DDPMProcess(100, "sample", 0.0, 1.0)])
def test_clean_sample_estimates_invert_exactly(process):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 6, 3, generator=g, dtype=torch.float64), torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    x_t = process.add_noise(x0, t, eps)
    pred = process.target(x0, eps, t)
    assert torch.allclose(process.x0_estimate(x_t, t, pred), x0, atol=1e-5)
    assert torch.allclose(process.prediction_for(x_t, t, x0), pred, atol=1e-5)
    assert torch.allclose(process.add_noise(x0, t, process.noise_estimate(x_t, t, x0)), x_t, atol=1e-6)


def test_prefix_weights_follow_the_published_shape():
    w = prefix_weights(16, delay=3, overlap=8)
    assert np.all(w[:3] == 1.0) and np.all(w[8:] == 0.0)
    assert np.all(np.diff(w[2:9]) < 0)                     # strictly decaying from the delay to the overlap
    c = 5 / 6                                               # first soft weight: c (e^c - 1) / (e - 1)
    assert w[3] == pytest.approx(c * np.expm1(c) / np.expm1(1.0), rel=1e-6)
    lin = prefix_weights(16, delay=2, overlap=6, decay="linear")
    assert lin[2:6] == pytest.approx([4 / 5, 3 / 5, 2 / 5, 1 / 5])
    assert np.all(prefix_weights(8, delay=5, overlap=3) == [1, 1, 1, 0, 0, 0, 0, 0])   # delay capped by overlap
    with pytest.raises(ValueError, match="decay"):
        prefix_weights(8, 1, 4, decay="cosine")


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_inpainting_returns_the_committed_prefix(process, steps):
    policy = make_policy(*PROCESSES[process])
    prefix = torch.linspace(-1.5, 1.5, 2 * 6 * 3).reshape(2, 6, 3)
    free = policy.predict_action_chunks(batch_of(policy), steps, torch.Generator().manual_seed(3))
    chunk = policy.predict_action_chunks(batch_of(policy), steps, torch.Generator().manual_seed(3), prefix=prefix,
                                         delay=3, rtc="inpaint")
    # weight 1 over the delay; float32 DDPM at its noisiest level divides by sqrt(abar) ~ 0.02
    assert torch.allclose(chunk[:, :3], prefix[:, :3], atol=1e-3)
    if process != "ddpm":   # an untrained epsilon network's clean estimate is clipped to the range: no gradient of closeness
        assert (chunk[:, 3:6] - prefix[:, 3:6]).abs().mean() < (free[:, 3:6] - prefix[:, 3:6]).abs().mean()
    assert torch.isfinite(chunk).all()


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_a_clean_prefix_is_held_fixed_and_the_policy_must_be_trained_for_it(process):
    policy = make_policy(*PROCESSES[process], "policy.prefix_delay_max=4")
    prefix = torch.full((2, 5, 3), 0.7)
    chunk = policy.predict_action_chunks(batch_of(policy), 4, prefix=prefix, delay=4, rtc="train")
    assert torch.allclose(chunk[:, :4], prefix[:, :4], atol=1e-5)
    with pytest.raises(ValueError, match="prefix_delay_max >= 5"):
        policy.predict_action_chunks(batch_of(policy), 4, prefix=torch.zeros(2, 8, 3), delay=5, rtc="train")


def test_training_levels_put_a_random_prefix_at_level_zero_outside_the_loss():
    policy = make_policy("policy.prefix_delay_max=5")
    torch.manual_seed(0)
    t, mask = policy.training_levels(torch.zeros(512, 16, 3))
    delays = (~mask).sum(dim=1)
    assert t.shape == mask.shape == (512, 16)
    assert torch.all(t[~mask] == 0) and torch.all(t[mask] > 0)
    assert set(delays.tolist()) == set(range(6))                 # 0..prefix_delay_max, all drawn
    assert 0.4 < float((delays == 0).float().mean()) < 0.6        # no prefix for half the samples
    assert torch.all(mask[:, 5:])                                  # never beyond the maximum
    assert make_policy().training_levels(torch.zeros(4, 16, 3)) == (None, None)


def test_warm_start_begins_from_the_rest_of_the_previous_chunk():
    policy = make_policy()
    n = policy.spec.n_action_steps
    executor = ChunkExecutor(policy, batch_size=1, steps=2, warm_start=0.02)
    executor.reset(policy.goal_inputs("a", 1))
    executor.observe({"state": np.zeros((1, 5), np.float32)})
    first = executor.predict()
    second = executor.predict(first[:, n:])
    cold = ChunkExecutor(policy, batch_size=1, steps=2)
    cold.reset(policy.goal_inputs("a", 1))
    cold.observe({"state": np.zeros((1, 5), np.float32)})
    # from level 0.02 the sampler barely moves: the plan is kept; from noise it is not
    warm_gap = np.abs(second[:, : 16 - n] - first[:, n:]).mean()
    cold_gap = np.abs(cold.predict()[:, : 16 - n] - first[:, n:]).mean()
    assert warm_gap < 0.1 * cold_gap
    with pytest.raises(ValueError, match="warm_start"):
        ChunkExecutor(policy, warm_start=1.0)


def const_chunk(value, h=4, b=1, a=2):
    return np.full((b, h, a), value, np.float32)


def test_schedule_switches_drops_and_holds():
    s = ChunkScheduler("naive")
    with pytest.raises(RuntimeError, match="first chunk"):
        s.action(0)
    assert s.add(const_chunk(1.0), start_step=0, now_step=0) == 0
    assert s.action(0)[0, 0] == 1.0 and s.action(1)[0, 0] == 1.0
    assert s.add(const_chunk(2.0), start_step=1, now_step=2) == 1         # its step-1 action has passed
    assert s.action(2)[0, 0] == 2.0 and s.action(3)[0, 0] == 2.0 and s.action(4)[0, 0] == 2.0
    assert s.action(5)[0, 0] == 2.0                                        # nothing covers 5: held
    assert s.stats.as_dict() == {"chunks": 2, "dropped": 1, "executed": 6, "blended": 0, "starved": 1}


def test_ensemble_weights_older_chunks_by_exp_minus_m_i():
    s = ChunkScheduler("ensemble", ensemble_m=np.log(2.0))
    s.add(const_chunk(0.0), 0, 0)
    s.add(const_chunk(3.0), 1, 1)
    s.add(const_chunk(6.0), 2, 2)
    assert s.action(0)[0, 0] == 0.0
    assert s.action(1)[0, 0] == pytest.approx((0 * 1 + 3 * 0.5) / 1.5)
    assert s.action(2)[0, 0] == pytest.approx((0 * 1 + 3 * 0.5 + 6 * 0.25) / 1.75)
    plan = s.planned(3, 10)                                                # steps 3, 4, 5 are covered
    assert plan.shape == (1, 3, 2) and plan[0, 2, 0] == pytest.approx(6.0)
    assert s.stats.blended == 2
    with pytest.raises(ValueError, match="blending"):
        ChunkScheduler("latest")


@pytest.mark.parametrize("delay", [0, 2, 4])
def test_delayed_executor_drops_the_delay_and_keeps_to_the_plan_with_rtc(delay):
    policy = make_policy("policy.prefix_delay_max=4")
    for rtc in (None, "train"):
        ex = DelayedChunkExecutor(policy, batch_size=2, delay=delay, rtc=rtc, steps=2)
        ex.reset(policy.goal_inputs("a", 2))
        rng = np.random.default_rng(0)
        planned, executed = {}, []
        for t in range(41 + delay):                       # requests at 0, 8, ..., 40, all arrived
            ex.observe({"state": rng.normal(size=(2, 5)).astype(np.float32)})
            if t % 8 == 0 and t > 0:
                planned[t] = ex.scheduler.planned(t, delay)                    # what runs during the delay
            executed.append(ex.act())
        stats = ex.scheduler.stats
        assert stats.chunks == 6 and stats.dropped == delay * 5 and stats.starved == 0
        assert ex.seams.as_dict()["seams"] == 2 * 5
        if rtc == "train" and delay:
            for t, plan in planned.items():       # executed during the delay = the old plan (by construction)
                assert np.allclose(np.stack(executed[t:t + delay], 1), plan)
        ex.reset(policy.goal_inputs("a", 2))                 # a new episode: totals keep the last one's
        assert ex.schedule_stats == stats and ex.scheduler.stats.chunks == 0
    with pytest.raises(ValueError, match="delay=9"):
        DelayedChunkExecutor(policy, delay=9)
