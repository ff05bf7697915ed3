"""The control API (reset / observe / select_action) and the chunk executor behind it.

The central check: driving a real Meta-World episode through the API, the observation
history the network receives at every chunk equals the sampler's training window for that
step: consecutive control steps, however many actions a chunk executes.
"""

import numpy as np
import pytest
import torch

from ditpolicy.config import policy_config
from ditpolicy.datasets import DemoStore, EpisodeWriter, Normalizer, SequenceSampler, compute_stats
from ditpolicy.datasets.stats import array_stats
from ditpolicy.envs.collect import make_expert
from ditpolicy.envs.metaworld_env import MetaWorldEnv
from ditpolicy.policies import DiffusionPolicy, ObservationError, PolicySpec

TINY = ["policy.d_model=32", "policy.denoiser.n_layers=1", "policy.denoiser.n_heads=2"]


def tiny_policy(stats, obs_shapes, tasks, action_dim=4, *overrides) -> DiffusionPolicy:
    spec = PolicySpec.from_config(policy_config([*TINY, *overrides]), obs_shapes, [], action_dim, tasks)
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()


def spy_on_predictions(policy):
    """Record the batch and the chunk of every prediction the policy makes."""
    calls = []
    original = policy.predict_action_chunks

    def spy(batch, *args, **kwargs):
        chunk = original(batch, *args, **kwargs)
        calls.append(({k: v.clone() for k, v in batch.items()}, chunk.clone()))
        return chunk
    policy.predict_action_chunks = spy
    return calls


def test_history_seen_by_the_network_is_the_training_window(tmp_path):
    task, seed, steps = "reach-v3", 11, 37
    env, expert = MetaWorldEnv(task), make_expert(task)
    obs, _ = env.reset(seed=seed)
    states, actions = [], []
    # the policy's own actions are not executed (it is untrained): the expert drives the env
    # while the policy observes every step and is asked for an action every step
    path = tmp_path / "episode.zarr"
    with EpisodeWriter(path) as writer:
        probe = {"state": np.zeros((2, 39), np.float32), "action": np.zeros((2, 4), np.float32)}
        writer.add_episode(probe, task=task)                         # gives the stats something
    stats = compute_stats(DemoStore.open(path))
    policy = tiny_policy(stats, {"state": [39]}, [task], 4, "policy.n_obs=3", "policy.horizon=8",
                         "policy.n_action_steps=5")
    calls = spy_on_predictions(policy)
    policy.reset(task=task)
    for _ in range(steps):
        policy.observe(obs)
        policy.select_action()
        action = expert(env.raw_state)
        states.append(obs["state"])
        actions.append(action)
        obs, *_ = env.step(action)
    env.close()

    path = tmp_path / "driven.zarr"
    with EpisodeWriter(path) as writer:
        writer.add_episode({"state": np.stack(states), "action": np.stack(actions)}, task=task)
    sampler = SequenceSampler(DemoStore.open(path), ["state"], n_obs=3, horizon=8)
    assert len(calls) == int(np.ceil(steps / 5))                      # one chunk per 5 actions
    for i, (batch, _) in enumerate(calls):
        current = 5 * i                                                # the step the chunk starts at
        window = sampler[current]                                      # every step is a current step
        np.testing.assert_array_equal(batch["state"][0].numpy(), window["state"])
        assert batch["task_id"].tolist() == [0]
    # the window of a later chunk holds consecutive steps, not steps 5 apart
    np.testing.assert_array_equal(calls[2][0]["state"][0].numpy(), np.stack(states)[[8, 9, 10]])


@pytest.fixture
def policy():
    rng = np.random.default_rng(0)
    stats = {"state": array_stats(rng.normal(size=(100, 3))), "action": array_stats(rng.uniform(-1, 1, (100, 2)))}
    return tiny_policy(stats, {"state": [3]}, ["a", "b"], 2, "policy.n_obs=2", "policy.horizon=6",
                       "policy.n_action_steps=4")


def test_select_action_serves_each_chunk_then_refills(policy):
    calls = spy_on_predictions(policy)
    policy.reset(task="b")
    served = []
    for step in range(12):
        policy.observe({"state": np.full(3, step, np.float32) / 10})
        served.append(policy.select_action())
    assert len(calls) == 3
    for i, (batch, chunk) in enumerate(calls):
        np.testing.assert_array_equal(np.stack(served[4 * i: 4 * i + 4]), chunk[0, :4].numpy())
        assert batch["task_id"].tolist() == [1]
    assert policy.executor.queued == 0
    assert len(policy.executor.warmup_ms) == 1 and len(policy.executor.latencies_ms) == 2


def test_reset_forgets_history_and_queue(policy):
    calls = spy_on_predictions(policy)
    policy.reset(task="a")
    for step in range(3):
        policy.observe({"state": np.full(3, step, np.float32)})
    policy.select_action()
    policy.reset(task="a")
    assert policy.executor.queued == 0
    policy.observe({"state": np.full(3, 7.0, np.float32)})
    policy.select_action()
    np.testing.assert_array_equal(calls[-1][0]["state"][0].numpy(), np.full((2, 3), 7.0))  # first obs repeated


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_bad_observations_are_refused_and_leave_the_history_untouched(policy, bad):
    policy.reset(task="a")
    policy.observe({"state": np.array([0.1, 0.2, 0.3], np.float32)})
    before = policy.executor.history()
    with pytest.raises(ObservationError, match=r"observation 'state' holds .* at row 0, index 1 .*refused, "
                                               r"the history is unchanged"):
        policy.observe({"state": np.array([0.1, bad, 0.3])})
    after = policy.executor.history()
    np.testing.assert_array_equal(before["state"], after["state"])
    assert np.isfinite(policy.select_action()).all()


def test_control_api_errors_name_the_problem(policy):
    with pytest.raises(ValueError, match=r"trained on 2 tasks: reset\(task=...\) must name one of \['a', 'b'\]"):
        policy.reset()
    with pytest.raises(ValueError, match="task index 99 is out of range: this policy knows 2 tasks"):
        policy.reset(task=99)
    with pytest.raises(ValueError, match="task 'c' is not one this policy was trained on"):
        policy.reset(task="c")
    policy.reset(task=1)
    with pytest.raises(RuntimeError, match=r"no observation yet: call observe\(obs\)"):
        policy.select_action()
    with pytest.raises(ObservationError, match=r"observation lacks keys \['state'\]"):
        policy.observe({"pos": np.zeros(3)})
    with pytest.raises(ObservationError, match=r"observation 'state' has shape \(1, 4\), policy expects \(1, 3\)"):
        policy.observe({"state": np.zeros(4)})
    with pytest.raises(ObservationError, match="predict_chunk takes a history of n_obs=2 consecutive observations"):
        policy.predict_chunk({"state": np.zeros(3)})


def test_predict_chunk_takes_a_callers_history(policy):
    policy.reset(task="b")
    history = {"state": np.array([[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]], np.float32)}
    torch.manual_seed(0)
    a = policy.predict_chunk(history, steps=2)
    torch.manual_seed(0)
    b = policy.predict_action_chunks({"state": torch.from_numpy(history["state"])[None],
                                      "task_id": torch.tensor([1])}, 2)[0].numpy()
    assert a.shape == (6, 2)
    np.testing.assert_array_equal(a, b)
