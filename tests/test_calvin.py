"""CALVIN's protocol: the 1000 evaluation chains are the official draw (digest pinned from
mees/calvin's generator), valid under the subtask rules, and reproduced by the generator;
the bookkeeping (early stop, average length, success@k, resume) on hand-computed cases; the
simulator state of each chain's initial scene is the official one (values pinned from
mees/calvin's get_env_state_for_initial_condition); the runner on calvin_env where installed."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from ditpolicy.envs.calvin.chains import (SUBTASKS, apply, category, chains_per_scene, draw_scene, evaluation_order,
                                          initial_scenes, is_valid, load_chains)
from ditpolicy.envs.calvin.protocol import evaluate_chains, summarize
from ditpolicy.envs.calvin.runner import simulator_action
from ditpolicy.envs.calvin.scene import ROBOT_OBS, fnv1_32, initial_scene, scene_seed

# sha256 of json.dumps([[initial_state, tasks], ...], sort_keys=True) of the 1000 chains that
# mees/calvin's get_sequences(1000) returns (calvin_models/.../multistep_sequences.py, fa03f01f)
OFFICIAL_DIGEST = "13bc4fad80a302e6405e5f4f800cc028789a245409cd12df39b783099ad4860f"
# sha256 of np.round(rows, 9).tobytes(), rows (1000, 39) = robot_obs + scene_obs of each chain's
# initial scene as mees/calvin's get_env_state_for_initial_condition returns them (pyhash fnv1_32)
OFFICIAL_SCENES_DIGEST = "100926c6e7add7905f929ccdb8c72c4a481b7fb1eeee1524317fac1504d8281b"


def test_the_shipped_chains_are_the_official_draw_and_obey_the_rules():
    chains = load_chains()
    digest = hashlib.sha256(json.dumps([[s, t] for s, t in chains], sort_keys=True).encode()).hexdigest()
    assert digest == OFFICIAL_DIGEST
    assert len(SUBTASKS) == 34 and len(initial_scenes()) == 192
    assert len({json.dumps(s, sort_keys=True) for s, _ in chains}) == 192            # every scene used
    for scene, chain in chains:
        assert len(chain) == 5 and len(set(chain)) == 5 and is_valid(scene, chain)
        assert len({category(t) for t in chain}) == 5
        tables = [scene[f"{b}_block"] for b in ("red", "blue", "pink")].count("table")
        assert tables in (1, 2) and scene["grasped"] == 0
    assert chains[0] == ({"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
                          "blue_block": "table", "pink_block": "slider_right", "grasped": 0},
                         ["rotate_blue_block_right", "move_slider_right", "lift_red_block_slider", "place_in_slider",
                          "turn_off_lightbulb"])


def test_the_generator_reproduces_the_shipped_chains_scene_by_scene():
    chains, counts, order = load_chains(), chains_per_scene(), evaluation_order()
    assert Counter(counts) == {6: 40, 5: 152}
    starts = np.concatenate([[0], np.cumsum(counts)])
    position = {drawn: i for i, drawn in enumerate(order)}            # scene-ordered index -> evaluation index
    scenes = initial_scenes()
    for index in (0, 1, 57, 191):
        drawn = draw_scene(index, scenes[index], counts[index])
        assert drawn == [chains[position[starts[index] + k]][1] for k in range(counts[index])]
        assert all(chains[position[starts[index] + k]][0] == scenes[index] for k in range(counts[index]))


@pytest.mark.slow
def test_the_generator_reproduces_all_1000_shipped_chains():
    from ditpolicy.envs.calvin.chains import generate_chains
    assert generate_chains() == load_chains()


def test_subtask_rules_match_hand_worked_scenes():
    scene = {"led": 0, "lightbulb": 1, "slider": "right", "drawer": "closed", "red_block": "table",
             "blue_block": "slider_left", "pink_block": "slider_right", "grasped": 0}
    assert apply(scene, "lift_blue_block_slider")["blue_block"] == "grasped"         # slider right frees the left slot
    assert apply(scene, "lift_pink_block_slider") is None
    assert apply(scene, "push_into_drawer") is None                                 # the drawer is closed
    opened = apply(scene, "open_drawer")
    assert apply(opened, "push_into_drawer")["red_block"] == "drawer"
    held = apply(scene, "lift_red_block_table")
    assert held["grasped"] == 1 and apply(held, "turn_on_led") is None              # nothing else while holding
    assert apply(held, "stack_block") is None                                       # no block on the table to stack on
    assert is_valid(scene, ["lift_red_block_table", "place_in_slider", "move_slider_left", "open_drawer",
                            "turn_on_led"])                                          # slots are not tracked
    assert is_valid(scene, ["place_in_slider", "lift_red_block_table", "move_slider_left", "open_drawer",
                            "turn_on_led"]) is False                                 # nothing held to place
    assert is_valid(scene, ["rotate_red_block_left", "push_red_block_right", "open_drawer", "turn_on_led",
                            "move_slider_left"]) is False                            # two of one category


class ScriptedRunner:
    """Succeeds on the subtasks in ``can``; records what the protocol asked for."""

    def __init__(self, can):
        self.can, self.calls, self.resets = set(can), [], 0

    def reset(self, initial_state):
        self.resets += 1

    def run_subtask(self, subtask, max_steps):
        self.calls.append((subtask, max_steps))
        return subtask in self.can


def test_chains_stop_at_the_first_failure_and_the_metrics_match_a_hand_count(tmp_path):
    scene = {"led": 0}
    chains = [(scene, ["a", "b", "c", "d", "e"]),       # all five: 5
              (scene, ["a", "x", "b", "c", "d"]),       # fails second: 1
              (scene, ["x", "a", "b", "c", "d"]),       # fails first: 0
              (scene, ["a", "b", "c", "x", "e"])]       # 3
    runner = ScriptedRunner("abcde")
    summary = evaluate_chains(runner, chains, tmp_path / "chains.jsonl", progress=False)
    assert runner.resets == 4 and len(runner.calls) == 5 + 2 + 1 + 4 and {m for _, m in runner.calls} == {360}
    assert summary["average_length"] == pytest.approx((5 + 1 + 0 + 3) / 4)
    assert summary["success_at"] == {1: 0.75, 2: 0.5, 3: 0.5, 4: 0.25, 5: 0.25}
    assert summary["subtasks"]["x"] == {"successes": 0, "attempts": 3, "success_rate": 0.0}
    assert summary["subtasks"]["a"]["attempts"] == 3 and summary["subtasks"]["e"]["attempts"] == 1
    # resume: a file holding the first two chains runs only the other two, with the same summary
    lines = (tmp_path / "chains.jsonl").read_text().splitlines()
    (tmp_path / "part.jsonl").write_text("\n".join(lines[:2]) + "\n")
    again = ScriptedRunner("abcde")
    assert evaluate_chains(again, chains, tmp_path / "part.jsonl", progress=False) == summary
    assert again.resets == 2
    assert json.loads(lines[0])["tasks"] == ["a", "b", "c", "d", "e"]           # the chain list is saved with results
    assert summarize([])["average_length"] == 0.0


def test_initial_scenes_are_the_official_simulator_states():
    chains = load_chains()
    example = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "table",
               "blue_block": "slider_right", "pink_block": "slider_left", "grasped": 0}
    assert scene_seed(example) == 951001851 and scene_seed(chains[0][0]) == 2138410836      # pyhash's fnv1_32
    assert fnv1_32("") == 0 and fnv1_32("a") == 0x610098B3        # FNV-1 over UTF-16-LE: 'a' is bytes 61 00
    robot, scene = initial_scene(chains[0][0])                     # led 1, bulb 1, slider left, drawer open
    assert np.array_equal(robot, ROBOT_OBS)
    np.testing.assert_allclose(scene[:6], [0.28, 0.22, 0.0, 0.088, 1.0, 1.0])
    np.testing.assert_allclose(scene[6:12], [-0.240851662, 0.0924044687, 0.460990009, 0, 0, 1.8859410064104645])
    np.testing.assert_allclose(scene[18:24], [0.070341633, 0.0924044687, 0.460990009, 0, 0, 1.4683986863194542])
    rows = np.array([np.concatenate(initial_scene(s)) for s, _ in chains])
    assert hashlib.sha256(np.round(rows, 9).tobytes()).hexdigest() == OFFICIAL_SCENES_DIGEST
    assert np.all(np.abs(rows[:, 15 + np.array([11, 17, 23])] - np.pi / 2) <= np.pi / 8)
    numpy_typed = {k: (np.int64(v) if isinstance(v, int) else v) for k, v in example.items()}
    assert scene_seed(numpy_typed) == 951001851                    # JSON or numpy values hash alike
    with pytest.raises(ValueError, match="lacks \\['grasped'\\]"):
        initial_scene({k: v for k, v in example.items() if k != "grasped"})


def test_actions_reach_the_simulator_clipped_with_a_binary_gripper():
    np.testing.assert_array_equal(simulator_action(np.array([2.0, -3.0, 0.5, 0, 0, 0, 0.2])),
                                  [1.0, -1.0, 0.5, 0, 0, 0, 1.0])
    assert simulator_action(np.zeros(7))[6] == -1.0
    for bad in (np.zeros(6), np.array([np.nan, 0, 0, 0, 0, 0, 1.0])):
        with pytest.raises(ValueError, match="7 finite numbers"):
            simulator_action(bad)


def test_eval_env_calvin_names_the_missing_simulator(tmp_path):
    pytest.importorskip("h5py")
    try:
        import calvin_env  # noqa: F401
        pytest.skip("calvin_env is installed here")
    except ImportError:
        pass
    import subprocess
    import sys

    from helpers import TINY_POLICY
    from official_layouts import write_calvin_split

    from ditpolicy.config import compose
    from ditpolicy.datasets.convert import convert
    from ditpolicy.policies.train import Trainer

    split = tmp_path / "training"
    write_calvin_split(split, [(0, 23)], [(2, 12, "open the drawer", "open_drawer")])
    convert("calvin", split, tmp_path / "store.zarr", progress=False)
    cfg = compose("train", [f"dataset.path={tmp_path / 'store.zarr'}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY,
                            "dataset.obs_keys=[state]", "train.steps=2", "train.save_every=2"])
    Trainer(cfg).run()
    out = subprocess.run([sys.executable, "-m", "ditpolicy", "eval", f"checkpoint={tmp_path / 'run'}", "env=calvin",
                          "env.chains=2", f"out={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "CALVIN's simulator is not installed" in out.stderr and "mees/calvin_env" in out.stderr
    assert not (tmp_path / "eval" / "calvin_chains.jsonl").exists()


class DrawerOpener:
    """Relative actions only: over the drawer's handle, down onto it, close, pull 0.2 m; holds
    still on any other subtask."""

    PLAN = [((0.18, -0.29, 0.47), 1.0), ((0.185, -0.26, 0.40), 1.0), (None, -1.0), ((0.18, -0.47, 0.36), -1.0)]

    def start(self, subtask, instruction, obs):
        self.obs, self.subtask, self.phase, self.count = obs, subtask, 0, 0

    def observe(self, obs):
        self.obs = obs

    def act(self):
        action = np.array([0, 0, 0, 0, 0, 0, 1.0])
        if self.subtask != "open_drawer":
            return action
        target, action[6] = self.PLAN[min(self.phase, 3)]
        self.count += 1
        if target is None:
            if self.count >= 10:
                self.phase, self.count = self.phase + 1, 0
            return action
        error = np.array(target) - self.obs["state"][:3]
        action[:3] = np.clip(error / 0.02, -1, 1)
        if np.linalg.norm(error) < 0.01 or self.count > 25:
            self.phase, self.count = self.phase + 1, 0
        return action


def test_the_runner_on_calvins_own_simulator_and_oracle(tmp_path):
    pytest.importorskip("calvin_env", reason="CALVIN's simulator, installed from mees/calvin_env")
    from ditpolicy.envs.calvin.runner import CalvinRunner, observation_of

    runner = CalvinRunner(DrawerOpener(), cameras=False)
    try:
        initial, _ = load_chains()[0]
        runner.reset(initial)
        obs = observation_of(runner.env.get_obs())
        robot, scene = initial_scene(initial)
        assert np.abs(obs["scene_obs"] - scene).max() < 0.01 and np.abs(obs["state"][:6] - robot[:6]).max() < 1e-4
        closed = {**initial, "drawer": "closed"}
        summary = evaluate_chains(runner, [(closed, ["open_drawer", "turn_on_led", "move_slider_right",
                                                     "turn_off_lightbulb", "close_drawer"])], tmp_path / "c.jsonl",
                                  progress=False)
        assert summary["average_length"] == 1.0                   # opened by the robot; the LED never pressed
        assert 360 < runner.steps < 2 * 360                      # the drawer opened well within its 360 steps
    finally:
        runner.close()
