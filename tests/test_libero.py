"""LIBERO under the published protocol on its real simulator: episode i starts from the
task's shipped initial state i, settles with no-op steps, runs to the suite's step limit
unless the goal holds, and results resume from their file."""

import json

import numpy as np
import pytest

libero = pytest.importorskip("libero.libero", reason="LIBERO's simulator: pip install -e '.[libero]'")

from ditpolicy.envs.libero.env import LiberoEnv  # noqa: E402
from ditpolicy.envs.libero.protocol import evaluate_libero, run_wave  # noqa: E402
from ditpolicy.envs.libero.suites import NOOP, SETTLE_STEPS, STEP_LIMITS, suite_tasks  # noqa: E402


class StillActor:
    """Holds the arm still; optionally drops the task's object into the basket at step ``stage``."""

    cameras, image_size = [], 128

    def __init__(self, envs=(), stage: int | None = None):
        self.envs, self.stage, self.calls, self.n = list(envs), stage, 0, 0

    def start(self, task, observations, episodes):
        self.calls, self.n = 0, len(observations)

    def observe(self, observations):
        pass

    def act(self):
        self.calls += 1
        if self.stage is not None and self.calls == self.stage:
            for env in self.envs:
                sim, raw = env.env.sim, env.env.env._get_observations()
                address = sim.model.get_joint_qpos_addr("alphabet_soup_1_joint0")[0]
                sim.data.qpos[address:address + 3] = raw["basket_1_pos"] + np.array([0.0, 0.0, 0.06])
                sim.forward()
        return np.repeat(NOOP[None], self.n, axis=0)


@pytest.fixture(scope="module")
def task():
    tasks = suite_tasks("libero_object")
    assert len(tasks) == 10 and tasks[0].init_states.shape == (50, 110)
    return tasks[0]


def test_an_episode_starts_from_its_initial_state_settles_and_runs_to_the_limit(task):
    env = LiberoEnv(task)
    try:
        env.env.reset()
        env.env.set_init_state(task.init_states[7])
        assert np.allclose(env.env.get_sim_state(), task.init_states[7])
        obs = env.reset(7)
        assert env.steps == SETTLE_STEPS and obs["state"].shape == (15,)
        rows = run_wave([env], task, [7], StillActor(), STEP_LIMITS["libero_object"])
        assert rows == [{"task": task.name, "episode": 7, "success": False, "steps": 280}]
        assert env.steps == SETTLE_STEPS + 280
        env.reset(3)
        state = env.env.get_sim_state()                  # [time, qpos, qvel]: 10 steps of 0.05 s later
        assert state[0] == pytest.approx(SETTLE_STEPS / 20) and np.allclose(state[1:8], task.init_states[3][1:8], atol=0.05)
        with pytest.raises(ValueError, match="ships 50 initial states"):
            env.reset(50)
    finally:
        env.close()


def test_the_goal_ends_an_episode_with_success(task):
    env = LiberoEnv(task, objects=True)
    try:
        def position(name):                              # the body's world position (a reset may rebuild sim)
            sim = env.env.sim
            return sim.data.body_xpos[sim.model.body_name2id(f"{name}_main")]

        start = env.reset(0)["object_state"]            # object of interest, then the basket: 10 numbers each
        assert start.shape == (20,) and np.allclose(start[:3], position("alphabet_soup_1"), atol=1e-6)
        assert np.allclose(start[10:13], position("basket_1"), atol=1e-6)
        assert np.linalg.norm(start[:2] - start[10:12]) > 0.1                 # the can starts outside the basket
        rows = run_wave([env], task, [0], StillActor([env], stage=5), STEP_LIMITS["libero_object"])
        assert rows[0]["success"] and 5 <= rows[0]["steps"] < 60
        end = env.observation(env.raw)["object_state"]
        assert np.allclose(end[:3], position("alphabet_soup_1"), atol=1e-6)
        assert np.linalg.norm(end[:2] - end[10:12]) < 0.05                    # the staged can lies in the basket
    finally:
        env.close()


def test_a_killed_evaluation_resumes_from_its_results_file(tmp_path, task):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"task": task.name, "episode": 0, "success": True, "steps": 40}) + "\n")
    result = evaluate_libero(StillActor(), "libero_object", tasks=[task.name], trials=2, num_envs=1,
                             results=results, progress=False)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1]                    # only the missing episode ran
    assert result.tasks[0].successes == [True, False] and result.tasks[0].lengths == [40, 280]
    with pytest.raises(ValueError, match="trials must be 1..50"):
        evaluate_libero(StillActor(), "libero_object", trials=51)
    with pytest.raises(ValueError, match="has no task"):
        evaluate_libero(StillActor(), "libero_object", tasks=["make coffee"], trials=1)


def test_ditpolicy_eval_runs_a_policy_trained_on_converted_libero_demos(tmp_path):
    from helpers import TINY_POLICY
    from official_layouts import write_libero_hdf5

    from ditpolicy.cli import main as cli
    from ditpolicy.config import compose
    from ditpolicy.datasets.convert import convert
    from ditpolicy.policies.train import Trainer

    (tmp_path / "src").mkdir()
    write_libero_hdf5(tmp_path / "src" / "pick_up_the_alphabet_soup_and_place_it_in_the_basket_demo.hdf5",
                      "pick up the alphabet soup and place it in the basket", [20, 20])
    convert("libero", tmp_path / "src", tmp_path / "store.zarr", progress=False)
    cfg = compose("train", [f"dataset.path={tmp_path / 'store.zarr'}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY,
                            "dataset.obs_keys=[state]", "train.steps=2", "train.save_every=2"])
    Trainer(cfg).run()
    out = tmp_path / "eval"
    assert cli(["eval", f"checkpoint={tmp_path / 'run'}", "env=libero", "env.trials=1", "tasks=[0]", "num_envs=1",
                f"out={out}"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["suite"] == "libero_object" and result["episodes"] == 1
    assert result["tasks"][0]["task"] == "pick_up_the_alphabet_soup_and_place_it_in_the_basket"
    rows = [json.loads(line) for line in (out / "libero_libero_object.jsonl").read_text().splitlines()]
    assert rows[0]["episode"] == 0 and (rows[0]["success"] or rows[0]["steps"] == 280)


def test_the_scripted_expert_collects_a_demo_the_protocol_counts_as_success(tmp_path, task):
    from ditpolicy.cli import main as cli
    from ditpolicy.datasets import DemoStore

    out = tmp_path / "demos.zarr"
    assert cli(["collect", "env=libero", f"task=[{task.name}]", "episodes=1", f"out={out}", "env.cameras=[agentview]",
                "env.image_size=32", "env.objects=true"]) == 0
    store = DemoStore.open(out)
    assert store.n_episodes == 1 and store.task_name(0) == task.name and store.instruction(0) == task.instruction
    episode = store.episode(0)
    assert episode["state"].shape[1] == 15 and episode["action"].shape[1] == 7
    assert episode["object_state"].shape == (len(episode["action"]), 20)       # the can and the basket
    can_to_basket = episode["object_state"][:, 0:2] - episode["object_state"][:, 10:12]
    assert np.linalg.norm(can_to_basket[0]) > 0.1 and np.linalg.norm(can_to_basket[-1]) < 0.08
    assert episode["rgb_agentview"].shape[1:] == (32, 32, 3) and len(episode["action"]) < STEP_LIMITS["libero_object"]
    assert store.seeds[0] >= 100_003                             # a collection placement, not an evaluation state
    # replaying the recorded actions from the same placement reaches the goal again
    env = LiberoEnv(task)
    try:
        env.reset(seed=int(store.seeds[0]))
        done = False
        for action in episode["action"]:
            _, done = env.step(action)
        assert done
    finally:
        env.close()
