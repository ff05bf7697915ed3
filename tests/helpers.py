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
