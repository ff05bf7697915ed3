"""The heat map of a noise-routed mixture's expert choice per noise level (``expert_routing.png``)."""

from __future__ import annotations

from pathlib import Path


def plot_routes(routes: dict[float, list], n_experts: int, path: Path) -> None:
    """Heat map of routing weight per (noise level, block, expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = sorted(routes, reverse=True)
    n_blocks = len(routes[levels[0]])
    grid = np.zeros((len(levels), n_blocks * n_experts))
    for row, level in enumerate(levels):
        for block, (experts, gates) in enumerate(routes[level]):
            for e, g in zip(experts, gates):
                grid[row, block * n_experts + e] = g
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * grid.shape[1], 1.2 + 0.3 * len(levels)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(levels)), [f"{t:.3f}" for t in levels])
    ax.set_xticks(range(grid.shape[1]), [f"b{i // n_experts}e{i % n_experts}" for i in range(grid.shape[1])],
                  rotation=90)
    ax.set_ylabel("noise level t")
    ax.set_title("expert routing weight per noise level")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
