"""Checked reads of settings: a bad value names its config key.

    steps = positive_int(cfg, "train.steps")
    decay = number(cfg, "train.ema_decay", low=0.0, high=1.0)

The command turns a ``SettingError`` into exit code 2 and a one-line message.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf


class SettingError(ValueError):
    """A setting holds a value its key cannot take."""


def _get(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None:
        raise SettingError(f"{key} is not set")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg.<key>`` as an int (bools and non-integral values refused), at least ``minimum``."""
    value = _get(cfg, key)
    need = "a positive integer" if minimum == 1 else "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if not _is_number(value) or int(value) != value or (minimum is not None and value < minimum):
        raise SettingError(f"{key} must be {need}, got {value!r}")
    return int(value)


def positive_int(cfg: DictConfig, key: str) -> int:
    return integer(cfg, key, minimum=1)


def optional_positive_int(cfg: DictConfig, key: str) -> int | None:
    """``cfg.<key>`` as a positive integer, or None where the key is null (the default applies)."""
    return None if OmegaConf.select(cfg, key, throw_on_missing=True) is None else positive_int(cfg, key)


def number(cfg: DictConfig, key: str, low: float | None = None, high: float | None = None,
           above: float | None = None) -> float:
    """``cfg.<key>`` as a finite float within [low, high] and strictly greater than ``above``."""
    value = _get(cfg, key)
    if not _is_number(value):
        raise SettingError(f"{key} must be a number, got {value!r}")
    if above is not None and value <= above:
        need = "a positive number" if above == 0 else f"a number greater than {above}"
        raise SettingError(f"{key} must be {need}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingError(f"{key} must be in [{low if low is not None else '-inf'}, "
                           f"{high if high is not None else 'inf'}], got {value}")
    return float(value)


def flag(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise SettingError(f"{key} must be true or false, got {value!r}")
    return value


def choice(cfg: DictConfig, key: str, choices: tuple):
    """``cfg.<key>`` as one of ``choices``; with None among them the key may be null."""
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise SettingError(f"{key} must be one of {shown}, got {value!r}")
    return value
