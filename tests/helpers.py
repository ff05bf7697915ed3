"""Shared test data makers."""

import numpy as np


def make_episode(rng: np.random.Generator, length: int, image: bool = True) -> dict[str, np.ndarray]:
    """A random episode with a low-dim observation, an action and (optionally) 16x16 images."""
    data = {
        "state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
    }
    if image:
        data["rgb"] = rng.integers(0, 256, size=(length, 16, 16, 3), dtype=np.uint8)
    return data


TINY_POLICY = [
    "policy.d_model=32", "policy.denoiser.n_layers=2", "policy.denoiser.n_heads=2", "policy.horizon=8",
    "policy.n_action_steps=4", "policy.image_widths=[8,8,8,8]", "train.batch_size=32", "train.lr=1e-3",
    "train.warmup_steps=10", "train.progress=false", "train.val_every=0", "train.num_threads=1",
]


def write_reaching_store(path, episodes: int = 6, length: int = 24, seed: int = 0, image: bool = False) -> None:
    """A toy task: the action moves a 2-D point toward its goal; state = (point, goal)."""
    from ditpolicy.datasets import EpisodeWriter

    rng = np.random.default_rng(seed)
    with EpisodeWriter(path, overwrite=True) as writer:
        for e in range(episodes):
            point, goal = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
            states, actions = [], []
            for _ in range(length):
                action = np.clip(goal - point, -0.2, 0.2) * 5
                states.append(np.concatenate([point, goal]))
                actions.append(action)
                point = point + 0.1 * action
            data = {"state": np.array(states, np.float32), "action": np.array(actions, np.float32)}
            if image:
                data["rgb_cam"] = rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8)
            writer.add_episode(data, task=f"task{e % 2}", instruction="reach", success=True)
