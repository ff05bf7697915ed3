"""The verbs of the ``ditpolicy`` command, each taking its composed hydra config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def collect(cfg: DictConfig) -> int:
    from .envs.collect import collect as run_collect
    from .envs.collect import format_reports

    if cfg.env.name != "metaworld":
        raise ValueError(f"env={cfg.env.name!r}: collection supports env=metaworld")
    reports = run_collect(
        task=OmegaConf.to_object(cfg.task) if OmegaConf.is_list(cfg.task) else cfg.task,
        episodes=int(cfg.episodes), out=cfg.out, seed=int(cfg.seed),
        cameras=list(cfg.env.cameras), image_size=int(cfg.env.image_size),
        max_episode_steps=int(cfg.env.max_episode_steps), steps_after_success=int(cfg.env.steps_after_success),
        max_attempts_factor=float(cfg.max_attempts_factor), keep_failed=bool(cfg.keep_failed),
        overwrite=bool(cfg.overwrite),
    )
    print(format_reports(reports))
    print(f"wrote {cfg.out}")
    return 0


def info(cfg: DictConfig) -> int:
    from .datasets import DemoStore
    from .datasets.summary import summarize

    print(summarize(DemoStore.open(cfg.store), with_stats=bool(cfg.stats)))
    return 0


def demo(cfg: DictConfig) -> int:
    from .datasets import DemoStore
    from .datasets.summary import summarize
    from .envs.collect import collect as run_collect
    from .envs.collect import format_reports

    c = cfg.collect
    print(f"[1/2] collecting {c.episodes} expert episodes per task of {c.task} -> {c.out}")
    reports = run_collect(task=c.task, episodes=int(c.episodes), out=c.out, seed=int(c.seed), overwrite=True)
    print(format_reports(reports))
    print("\n[2/2] dataset summary")
    print(summarize(DemoStore.open(c.out), with_stats=False))
    return 0
