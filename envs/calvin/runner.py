"""The ``runner`` of protocol.py over CALVIN's own simulator and task oracle (``calvin_env``,
PyBullet; installed from its repository: it is not on PyPI, so this module imports it only
when a runner is built).

The environment is composed from calvin_env's own configs (``conf/``: scene, Panda robot with
the longer fingers the data was recorded with, the static 200x200 and gripper 84x84 cameras),
so no dataset is needed; its block order must be scene D's (red, blue, pink), the scene of
every published validation split. A chain resets it to ``scene.initial_scene``; each subtask
takes the scene's info at its start and succeeds the first step the oracle
(``conf/tasks/new_playtable_tasks.yaml``) finds the subtask done between that info and the
current one. Actions are CALVIN's relative ones, as the converters store them: position and
Euler deltas in [-1, 1] (x 0.02 m / 0.05 rad per step), clipped here because the simulator
does not clip, and the gripper sent as exactly +1 (open) or -1 (close).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .instructions import INSTRUCTIONS
from .scene import initial_scene

CAMERAS = ("static", "gripper")


def require_calvin_env():
    try:
        import calvin_env
        import calvin_env.envs.play_table_env as play_table_env
    except ImportError as exc:
        raise ImportError("CALVIN's simulator is not installed: clone mees/calvin_env, then "
                          f"pip install pybullet gitpython numpy-quaternion 'gym<0.26' and pip install -e it ({exc})"
                          ) from None
    # the environment records calvin_env's git commit and fails outside a git checkout
    play_table_env.get_git_commit_hash = lambda *args, **kwargs: "unknown"
    return Path(calvin_env.__file__).resolve().parents[1] / "conf"


def make_calvin_env(scene: str = "calvin_scene_D", cameras: bool = True, egl: bool = False):
    """calvin_env's PlayTableSimEnv, headless, built from its own configs."""
    import hydra
    from hydra import compose, initialize_config_dir

    conf = require_calvin_env()
    overrides = [f"cameras={'static_and_gripper' if cameras else 'no_cameras'}", f"scene={scene}",
                 "robot=panda_longer_finger", "use_vr=false"]
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="config_data_collection", overrides=overrides)
    order = list(cfg.scene.objects.movable_objects)
    if order != ["block_red", "block_blue", "block_pink"]:
        raise ValueError(f"scene={scene}: its blocks are {order}; CALVIN's evaluation scenes are scene D's "
                         "(block_red, block_blue, block_pink)")
    cfg.env.use_egl, cfg.env.show_gui = egl, False
    return hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True)


def load_oracle():
    """CALVIN's task oracle (calvin_env's Tasks over new_playtable_tasks.yaml)."""
    import hydra
    from omegaconf import OmegaConf

    conf = require_calvin_env()
    return hydra.utils.instantiate(OmegaConf.load(conf / "tasks" / "new_playtable_tasks.yaml"))


def observation_of(raw: dict) -> dict[str, np.ndarray]:
    """calvin_env's observation -> the converter's keys: ``state`` = robot_obs (15), ``scene_obs``
    (24), ``rgb_static`` (200, 200, 3), ``rgb_gripper`` (84, 84, 3)."""
    obs = {"state": np.asarray(raw["robot_obs"], np.float32), "scene_obs": np.asarray(raw["scene_obs"], np.float32)}
    for key, image in raw.get("rgb_obs", {}).items():
        obs[key] = np.asarray(image, np.uint8)
    return obs


def simulator_action(action: np.ndarray) -> np.ndarray:
    """A relative 7-D action as the simulator takes it: deltas clipped to [-1, 1], gripper +-1."""
    action = np.asarray(action, np.float64)
    if action.shape != (7,) or not np.isfinite(action).all():
        raise ValueError(f"a CALVIN action is 7 finite numbers (relative), got {action}")
    out = np.clip(action, -1.0, 1.0)
    out[6] = 1.0 if action[6] > 0 else -1.0
    return out


class CalvinRunner:
    """``reset(initial_state)`` / ``run_subtask(subtask, max_steps) -> bool`` for protocol.py;
    ``actor`` has ``start(subtask, instruction, obs)``, ``observe(obs)`` and ``act() -> (7,)``."""

    def __init__(self, actor, env=None, oracle=None, cameras: bool = True):
        self.actor = actor
        self.env = env if env is not None else make_calvin_env(cameras=cameras)
        self.oracle = oracle if oracle is not None else load_oracle()
        self.steps = 0                   # simulator steps of the current chain

    def reset(self, initial_state: dict) -> None:
        robot_obs, scene_obs = initial_scene(initial_state)
        self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        self.steps = 0

    def run_subtask(self, subtask: str, max_steps: int) -> bool:
        if subtask not in INSTRUCTIONS:
            raise ValueError(f"CALVIN has no subtask {subtask!r}; its subtasks: {sorted(INSTRUCTIONS)}")
        start = self.env.get_info()
        self.actor.start(subtask, INSTRUCTIONS[subtask], observation_of(self.env.get_obs()))
        for _ in range(max_steps):
            raw, _, _, info = self.env.step(simulator_action(self.actor.act()))
            self.steps += 1
            if self.oracle.get_task_info_for_set(start, info, {subtask}):
                return True
            self.actor.observe(observation_of(raw))
        return False

    def close(self) -> None:
        self.env.close()


class PolicyActor:
    """A trained policy as the runner's actor, one scene at a time. Its goal: the subtask's name
    as the task when the policy was trained on tasks named by subtask (else its only task) and,
    for a policy with language goals, ``embed(instruction) -> (L,)``, the embedding its
    training store holds for a text."""

    def __init__(self, policy, embed=None, n_action_steps: int | None = None, steps: int | None = None,
                 seed: int = 0):
        from ...policies.control import ChunkExecutor

        if "language" in policy.spec.goals and embed is None:
            raise ValueError("this policy takes language goals: pass embed=<instruction -> (L,) embedding>")
        self.policy, self.embed, self.seed, self.subtasks = policy, embed, seed, 0
        self.executor = ChunkExecutor(policy, batch_size=1, n_action_steps=n_action_steps, steps=steps)
        self.cameras = [k[len("rgb_"):] for k in policy.spec.image_keys]

    def start(self, subtask: str, instruction: str, obs: dict) -> None:
        spec = self.policy.spec
        goal = {"language": self.embed(instruction)} if "language" in spec.goals else {}
        task = subtask if subtask in spec.tasks else None
        self.executor.reset(self.policy.goal_inputs(task, 1, **goal), seeds=[self.seed + self.subtasks])
        self.subtasks += 1
        self.observe(obs)

    def observe(self, obs: dict) -> None:
        self.executor.observe({k: obs[k][None] for k in self.policy.spec.obs_keys})

    def act(self) -> np.ndarray:
        return self.executor.act()[0]
