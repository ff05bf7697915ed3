"""The ``convert`` verb: another stack's recordings into a zarr store, by ``format``."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from .settings import SettingError, flag, positive_int


def convert(cfg: DictConfig) -> int:
    if cfg.format == "rosbag":
        from .ros_commands import convert as convert_rosbag
        return convert_rosbag(cfg)
    from .datasets.convert import FORMATS, convert as convert_store

    if cfg.format not in FORMATS:
        raise SettingError(f"format={cfg.format!r}: convert reads {', '.join(('rosbag', *FORMATS))}")
    options = {"task": cfg.task, "overwrite": flag(cfg, "overwrite"), "progress": flag(cfg, "progress")}
    if cfg.format == "calvin":
        options.update(max_episode_steps=positive_int(cfg, "max_episode_steps"), extra_keys=list(cfg.extra_keys))
    elif cfg.format in ("libero", "robomimic"):
        options.update(flip=cfg.flip,
                       state_keys=None if cfg.state_keys is None else list(cfg.state_keys),
                       image_keys=None if cfg.image_keys is None else dict(OmegaConf.to_container(cfg.image_keys)))
    try:
        counts = convert_store(cfg.format, cfg.input, cfg.out, **options)
    except ImportError as exc:
        raise SettingError(str(exc)) from None
    print(f"wrote {counts['episodes']} episode(s) ({counts['frames']} frames) from {cfg.input} to {cfg.out}; "
          f"{json.dumps(counts)}")
    return 0
