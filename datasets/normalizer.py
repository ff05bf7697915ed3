"""Affine per-dimension normalisation, ``y = x * scale + offset``, saved as safetensors.

Modes per key:
- ``limits``: min-max to [-1, 1]; dimensions whose range is under ``eps`` are centred (mapped
  to 0) instead of blown up, as in the reference Diffusion Policy normaliser.
- ``gaussian``: (x - mean) / std, with std floored at ``eps``.
- ``identity``: unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

MODES = ("limits", "gaussian", "identity")


class Normalizer:
    """Holds (scale, offset) per key; works on numpy arrays and torch tensors of shape (..., D)."""

    def __init__(self, params: dict[str, tuple[np.ndarray, np.ndarray]], modes: dict[str, str]):
        self.params = {k: (np.asarray(s, np.float32), np.asarray(o, np.float32)) for k, (s, o) in params.items()}
        self.modes = dict(modes)
        self._torch: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_stats(cls, stats: dict[str, dict[str, np.ndarray]], modes: dict[str, str], eps: float = 1e-4) -> "Normalizer":
        params = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normaliser mode for {key!r} must be one of {MODES}, got {mode!r}")
            if key not in stats:
                raise KeyError(f"no statistics for key {key!r} (have {sorted(stats)})")
            s = stats[key]
            if mode == "limits":
                lo, hi = np.asarray(s["min"], np.float64), np.asarray(s["max"], np.float64)
                span = hi - lo
                flat = span < eps
                scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
                offset = np.where(flat, -(hi + lo) / 2, -1.0 - lo * scale)
            elif mode == "gaussian":
                scale = 1.0 / np.maximum(np.asarray(s["std"], np.float64), eps)
                offset = -np.asarray(s["mean"], np.float64) * scale
            else:
                scale = np.ones_like(np.asarray(s["mean"], np.float64))
                offset = np.zeros_like(scale)
            params[key] = (scale, offset)
        return cls(params, modes)

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def _coeffs(self, key: str, x):
        if key not in self.params:
            raise KeyError(f"normaliser has no key {key!r} (keys: {sorted(self.params)})")
        scale, offset = self.params[key]
        if isinstance(x, torch.Tensor):
            cache_key = (key, f"{x.device}:{x.dtype}")
            if cache_key not in self._torch:
                self._torch[cache_key] = (torch.as_tensor(scale, device=x.device, dtype=x.dtype),
                                          torch.as_tensor(offset, device=x.device, dtype=x.dtype))
            return self._torch[cache_key]
        return scale, offset

    def normalize(self, key: str, x):
        scale, offset = self._coeffs(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, y):
        scale, offset = self._coeffs(key, y)
        return (y - offset) / scale

    def save(self, path: str | Path) -> None:
        tensors = {}
        for key, (scale, offset) in self.params.items():
            tensors[f"{key}/scale"] = np.ascontiguousarray(scale)
            tensors[f"{key}/offset"] = np.ascontiguousarray(offset)
        save_file(tensors, str(path), metadata={f"mode/{k}": m for k, m in self.modes.items()})

    @classmethod
    def load(cls, path: str | Path) -> "Normalizer":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        modes = {k.split("/", 1)[1]: v for k, v in metadata.items() if k.startswith("mode/")}
        params = {}
        for key in modes:
            if f"{key}/scale" not in tensors or f"{key}/offset" not in tensors:
                raise KeyError(f"{path}: normaliser file lacks tensors for key {key!r}")
            params[key] = (tensors[f"{key}/scale"], tensors[f"{key}/offset"])
        return cls(params, modes)
