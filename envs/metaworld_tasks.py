"""Meta-World v3 task names, benchmark sets and a language instruction per task."""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the ring and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the hoop",
    "bin-picking-v3": "move the cube from one bin into the other",
    "box-close-v3": "pick up the lid and close the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock down",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock up",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate out of the cabinet to the side",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg to the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

ALL_TASKS: list[str] = list(INSTRUCTIONS)

MT10: list[str] = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]

TASK_SETS: dict[str, list[str]] = {"MT10": MT10, "MT50": ALL_TASKS}


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """'MT10', 'MT50', 'reach-v3', 'reach' or 'reach-v3,push-v3' (or a list) -> task names."""
    if isinstance(spec, (list, tuple)):
        names = [str(s) for s in spec]
    elif str(spec).upper() in TASK_SETS:
        return list(TASK_SETS[str(spec).upper()])
    else:
        names = [s.strip() for s in str(spec).split(",") if s.strip()]
    out = []
    for name in names:
        if name.upper() in TASK_SETS:
            out.extend(TASK_SETS[name.upper()])
            continue
        full = name if name.endswith("-v3") else f"{name}-v3"
        if full not in INSTRUCTIONS:
            close = [t for t in ALL_TASKS if name.split("-v")[0] in t][:5]
            hint = f"; did you mean {close}?" if close else "; see ditpolicy.envs.metaworld_tasks.ALL_TASKS"
            raise ValueError(f"unknown Meta-World task {name!r}{hint}")
        out.append(full)
    if not out:
        raise ValueError("no Meta-World task given")
    return out
