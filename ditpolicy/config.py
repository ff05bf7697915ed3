"""Composing configurations: the one place that turns the shipped hydra configs plus overrides
into a ``DictConfig``. The yaml files under ``ditpolicy.configs`` hold every default.

    >>> cfg = compose("train", ["dataset.path=data/demos.zarr", "policy/denoiser=dit"])

A family or config group that lives outside the package is found through hydra's search
path: ``compose("train", ["hydra.searchpath=[file:///my/configs]", "policy/denoiser=mine"])``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "ditpolicy.configs"


def _slug(value) -> str:
    """``${slug:${task}}``: a file-name-safe form of a task name or list (reach-v3,push -> reach+push)."""
    items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    return "+".join(str(item).removesuffix("-v3") for item in items)


if not OmegaConf.has_resolver("slug"):
    OmegaConf.register_new_resolver("slug", _slug)


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``name`` (a verb: train, eval, collect, ...) with ``key=value`` overrides applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def policy_config(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The ``policy`` section of the train config as a plain dict (``policy.*`` overrides apply)."""
    cfg = compose("train", ["dataset.path=unused", *overrides])
    return OmegaConf.to_container(cfg.policy, resolve=True)
