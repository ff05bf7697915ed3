"""CALVIN's protocol: the 1000 evaluation chains are the official draw (digest pinned from
mees/calvin's generator), valid under the subtask rules, and reproduced by the generator;
the bookkeeping (early stop, average length, success@k, resume) on hand-computed cases."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from ditpolicy.envs.calvin.chains import (SUBTASKS, apply, category, chains_per_scene, draw_scene, evaluation_order,
                                          initial_scenes, is_valid, load_chains)
from ditpolicy.envs.calvin.protocol import evaluate_chains, summarize

# sha256 of json.dumps([[initial_state, tasks], ...], sort_keys=True) of the 1000 chains that
# mees/calvin's get_sequences(1000) returns (calvin_models/.../multistep_sequences.py, fa03f01f)
OFFICIAL_DIGEST = "13bc4fad80a302e6405e5f4f800cc028789a245409cd12df39b783099ad4860f"


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
