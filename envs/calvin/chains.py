"""CALVIN's evaluation chains: 1000 (initial scene, 5 subtasks) pairs drawn as the official
evaluation draws them, so results compare with published tables.

The scene is symbolic: led and lightbulb (0/1), slider (right/left), drawer (closed/open),
each block's place (table, slider_left, slider_right, drawer, grasped, stacked_top,
stacked_bottom) and whether one is held. Each subtask has one or more branches (condition ->
effect); a chain is valid when, applied in order from its initial scene, every subtask
matches exactly one branch, and no two of its subtasks share a category.

Drawing: the 192 initial scenes are every combination with one or two blocks on the table
and at most one block on each slider side, in product order of (led, lightbulb, slider,
drawer, red, blue, pink). The first 40 scenes get 6 chains, the other 152 get 5. Scene i
draws with numpy's legacy generator seeded with i: five distinct subtasks (the first five of
a permutation of the 34 subtask names, in ``SUBTASKS`` order), kept when valid, until it has
its chains. The (scene, chain) list, in scene order, is then shuffled by a generator seeded
with 0.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np

BLOCKS = ("red", "blue", "pink")
SCENE_VALUES = {"led": (0, 1), "lightbulb": (0, 1), "slider": ("right", "left"), "drawer": ("closed", "open"),
                "red_block": ("table", "slider_right", "slider_left"),
                "blue_block": ("table", "slider_right", "slider_left"),
                "pink_block": ("table", "slider_right", "slider_left"), "grasped": (0,)}
CHAIN_LENGTH, NUM_CHAINS = 5, 1000


def _subtasks() -> dict[str, list[tuple[dict, dict]]]:
    """Subtask name -> branches (condition, effect), in the order the draw indexes them. A
    condition value that is a tuple means "one of"."""
    table: dict[str, list[tuple[dict, dict]]] = {}
    for verb in ("rotate", "push"):
        for b in BLOCKS:
            for side in ("right", "left"):
                table[f"{verb}_{b}_block_{side}"] = [({f"{b}_block": "table", "grasped": 0}, {})]
    table["move_slider_left"] = [({"slider": "right", "grasped": 0}, {"slider": "left"})]
    table["move_slider_right"] = [({"slider": "left", "grasped": 0}, {"slider": "right"})]
    table["open_drawer"] = [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})]
    table["close_drawer"] = [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})]
    for b in BLOCKS:
        held = {f"{b}_block": "grasped", "grasped": 1}
        table[f"lift_{b}_block_table"] = [({f"{b}_block": "table", "grasped": 0}, held)]
        table[f"lift_{b}_block_slider"] = [({f"{b}_block": "slider_left", "slider": "right", "grasped": 0}, held),
                                           ({f"{b}_block": "slider_right", "slider": "left", "grasped": 0}, held)]
        table[f"lift_{b}_block_drawer"] = [({f"{b}_block": "drawer", "drawer": "open", "grasped": 0}, held)]
    table["place_in_slider"] = [({f"{b}_block": "grasped", "slider": side, "grasped": 1},
                                 {f"{b}_block": f"slider_{side}", "grasped": 0})
                                for b in BLOCKS for side in ("right", "left")]
    table["place_in_drawer"] = [({f"{b}_block": "grasped", "drawer": "open", "grasped": 1},
                                 {f"{b}_block": "drawer", "grasped": 0}) for b in BLOCKS]
    pairs = [(a, b) for a in BLOCKS for b in BLOCKS if a != b]
    table["stack_block"] = [({f"{a}_block": "grasped", f"{b}_block": "table", "grasped": 1},
                             {f"{a}_block": "stacked_top", f"{b}_block": "stacked_bottom", "grasped": 0})
                            for a, b in pairs]
    table["unstack_block"] = [({f"{a}_block": "stacked_top", f"{b}_block": "stacked_bottom", "grasped": 0},
                               {f"{a}_block": "table", f"{b}_block": "table"}) for a, b in pairs]
    for thing in ("lightbulb", "led"):
        table[f"turn_on_{thing}"] = [({thing: 0, "grasped": 0}, {thing: 1})]
        table[f"turn_off_{thing}"] = [({thing: 1, "grasped": 0}, {thing: 0})]
    on_slider = ("slider_right", "slider_left")
    table["push_into_drawer"] = [({f"{b}_block": "table", **{f"{o}_block": on_slider for o in BLOCKS if o != b},
                                   "drawer": "open", "grasped": 0}, {f"{b}_block": "drawer", "grasped": 0})
                                 for b in BLOCKS]
    return table


SUBTASKS = _subtasks()


def category(subtask: str) -> str:
    """Subtasks of one category never share a chain."""
    if subtask.startswith(("rotate_", "push_")) and subtask != "push_into_drawer":
        return "rotate_push"
    if subtask.startswith("move_slider"):
        return "slider"
    if subtask in ("open_drawer", "close_drawer"):
        return "drawer"
    if subtask.startswith("lift_"):
        return "lift_" + subtask.rsplit("_", 1)[1]            # lift_table / lift_slider / lift_drawer
    if subtask.startswith("place_in"):
        return "place"
    if subtask.startswith("turn_"):
        return "light"
    return subtask                                            # push_into_drawer, stack_block, unstack_block


def initial_scenes() -> list[dict]:
    """The 192 initial scenes, in the draw's order."""
    scenes = []
    for values in product(*SCENE_VALUES.values()):
        blocks = values[4:7]
        if blocks.count("table") in (1, 2) and blocks.count("slider_right") < 2 and blocks.count("slider_left") < 2:
            scenes.append(dict(zip(SCENE_VALUES, values)))
    return scenes


def apply(scene: dict, subtask: str) -> dict | None:
    """The scene after ``subtask``, or None unless exactly one of its branches applies."""
    matches = [effect for condition, effect in SUBTASKS[subtask]
               if all(scene[k] in v if isinstance(v, tuple) else scene[k] == v for k, v in condition.items())]
    return {**scene, **matches[0]} if len(matches) == 1 else None


def is_valid(scene: dict, chain: list[str]) -> bool:
    """Every subtask applies in turn and no two share a category."""
    if len({category(s) for s in chain}) != len(chain):
        return False
    for subtask in chain:
        scene = apply(scene, subtask)
        if scene is None:
            return False
    return True


def draw_scene(index: int, scene: dict, count: int) -> list[list[str]]:
    """The ``count`` chains scene ``index`` draws (its own generator, seeded with ``index``)."""
    names = list(SUBTASKS)
    bits = [1 << sorted(set(map(category, names))).index(category(n)) for n in names]
    rng, chains = np.random.RandomState(index), []
    while len(chains) < count:
        picked = rng.permutation(len(names))[:CHAIN_LENGTH].tolist()
        mask = 0
        for i in picked:
            mask |= bits[i]
        if mask.bit_count() < CHAIN_LENGTH:                   # two subtasks of one category: the common case
            continue
        chain = [names[i] for i in picked]
        if is_valid(scene, chain):
            chains.append(chain)
    return chains


def chains_per_scene(num_chains: int = NUM_CHAINS) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(num_chains), len(initial_scenes()))]


def evaluation_order(num_chains: int = NUM_CHAINS) -> list[int]:
    """Position in the scene-ordered list of each evaluation chain: the final shuffle."""
    order = list(range(num_chains))
    np.random.RandomState(0).shuffle(order)
    return order


def generate_chains(num_chains: int = NUM_CHAINS) -> list[tuple[dict, list[str]]]:
    """The evaluation chains: (initial scene, [5 subtask names]) in evaluation order (about a
    minute on one core; ``load_chains`` reads the shipped copy)."""
    drawn = []
    for index, (scene, count) in enumerate(zip(initial_scenes(), chains_per_scene(num_chains))):
        drawn += [(scene, chain) for chain in draw_scene(index, scene, count)]
    return [drawn[i] for i in evaluation_order(num_chains)]


SHIPPED = Path(__file__).with_name("chains_1000.json")


def load_chains() -> list[tuple[dict, list[str]]]:
    """The 1000 evaluation chains, from the copy shipped with the package (written by
    ``generate_chains``; tests check it against the generator and the official draw)."""
    return [(row["initial_state"], row["tasks"]) for row in json.loads(SHIPPED.read_text())]


def write_chains(path: Path = SHIPPED) -> None:
    path.write_text(json.dumps([{"initial_state": scene, "tasks": chain} for scene, chain in generate_chains()]))
