"""mp4 files from frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 20) -> None:
    """Frames (H, W, 3) uint8 as an mp4 at ``path`` (folders made as needed)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(str(path), frames, fps=fps, macro_block_size=8)
