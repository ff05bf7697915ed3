"""Checked reads of numeric settings: a bad value names its config key.

    steps = positive_int(cfg, "train.steps")
    decay = number(cfg, "train.ema_decay", low=0.0, high=1.0)
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


class SettingError(ValueError):
    """A setting holds a value its key cannot take."""


def _get(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None:
        raise SettingError(f"{key} is not set")
    return value


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg.<key>`` as an int (bools and non-integral values refused), at least ``minimum``."""
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SettingError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SettingError(f"{key} must be {need}, got {int(value)}")
    return int(value)


def positive_int(cfg: DictConfig, key: str) -> int:
    return integer(cfg, key, minimum=1)


def number(cfg: DictConfig, key: str, low: float | None = None, high: float | None = None) -> float:
    """``cfg.<key>`` as a float within [low, high]."""
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(f"{key} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingError(f"{key} must be in [{low if low is not None else '-inf'}, "
                           f"{high if high is not None else 'inf'}], got {value}")
    return float(value)
