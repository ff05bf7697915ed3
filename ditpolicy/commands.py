"""The verbs of the ``ditpolicy`` command, each taking its composed hydra config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .settings import SettingError, choice, flag, integer, number, optional_positive_int, positive_int


def collect(cfg: DictConfig) -> int:
    if cfg.env.name == "driving":
        return collect_driving(cfg)
    if cfg.env.name == "libero":
        from .benchmark_commands import collect_libero_demos
        return collect_libero_demos(cfg)
    if cfg.env.name != "metaworld":
        raise ValueError(f"env={cfg.env.name!r}: collection supports env=metaworld, env=driving and env=libero")
    args = dict(
        episodes=positive_int(cfg, "episodes"), seed=integer(cfg, "seed", 0),
        image_size=positive_int(cfg, "env.image_size"), max_episode_steps=positive_int(cfg, "env.max_episode_steps"),
        steps_after_success=integer(cfg, "env.steps_after_success", 0),
        max_attempts_factor=number(cfg, "max_attempts_factor", above=0.0),
        keep_failed=flag(cfg, "keep_failed"), overwrite=flag(cfg, "overwrite"), wait=number(cfg, "wait", low=0.0),
        action_free=flag(cfg, "action_free"),
    )
    from .envs.collect import collect as run_collect
    from .envs.collect import format_reports

    reports = run_collect(
        task=OmegaConf.to_object(cfg.task) if OmegaConf.is_list(cfg.task) else cfg.task, out=cfg.out,
        cameras=list(cfg.env.cameras), **args,
    )
    print(format_reports(reports))
    had, kept = sum(r.existing for r in reports), sum(r.kept for r in reports)
    if had:
        print(f"continued {cfg.out}: it held {had} successful episodes of these tasks, this run kept {kept}")
    print(f"wrote {cfg.out}")
    return 0


def driving_env_options(cfg: DictConfig) -> dict:
    """DrivingEnv settings from the env=driving section, checked by key."""
    return dict(lanes=positive_int(cfg, "env.lanes"), vehicles=integer(cfg, "env.vehicles", 0),
                density=number(cfg, "env.density", above=0.0), duration_s=number(cfg, "env.duration_s", above=0.0),
                expert_speed=number(cfg, "env.expert_speed", above=0.0))


def eval_dir(cfg: DictConfig) -> Path:
    """``out``, or ``eval/`` beside the run that holds the checkpoint."""
    if cfg.out:
        return Path(cfg.out)
    ckpt = Path(cfg.checkpoint)
    return (ckpt if (ckpt / "checkpoints").exists() else ckpt.resolve().parent.parent) / "eval"


def collect_driving(cfg: DictConfig) -> int:
    """Expert demonstrations of highway-env's IDM/MOBIL driver (envs/driving/expert.py)."""
    try:
        from .envs.driving.expert import collect_driving as run_collect
    except ImportError as exc:
        raise SettingError(f"env=driving needs highway-env: pip install -e '.[driving]' ({exc})") from None
    report = run_collect(task=str(cfg.task), episodes=positive_int(cfg, "episodes"), out=cfg.out,
                         seed=integer(cfg, "seed", 0), overwrite=flag(cfg, "overwrite"),
                         wait=number(cfg, "wait", low=0.0), **driving_env_options(cfg))
    print(f"{cfg.task}: kept {report['kept']} of {report['tries']} expert episodes ({report['collisions']} ended "
          f"in a collision), {report['steps']} plans; the store holds {report['total']} episodes of it")
    print(f"wrote {cfg.out}")
    return 0


def info(cfg: DictConfig) -> int:
    from .datasets import DemoStore
    from .datasets.summary import summarize

    print(summarize(DemoStore.open(cfg.store), with_stats=bool(cfg.stats)))
    return 0


def verify(cfg: DictConfig) -> int:
    from .datasets.verify import verify_store

    report = verify_store(str(cfg.store))
    print(report.text())
    if not report.ok:
        print(f"ditpolicy verify: {len(report.problems)} problem(s) in store {cfg.store}: "
              + "; ".join(report.problems[:3]), file=sys.stderr)
        return 1
    return 0


def train(cfg: DictConfig) -> int:
    from .policies.train import train as run_train

    checkpoint = run_train(cfg)
    if checkpoint is not None:                          # rank 0 under torchrun
        print(f"checkpoint: {checkpoint.resolve()}")
    return 0


def distill(cfg: DictConfig) -> int:
    from .policies.checkpoint import CheckpointError, load_policy, resolve_checkpoint
    from .policies.distill import ConsistencyDistillation
    from .policies.distributed import resolve_device
    from .policies.train import Trainer

    teacher_dir = resolve_checkpoint(cfg.checkpoint)
    teacher = load_policy(teacher_dir, "cpu", use_ema=True)       # checks every file of the checkpoint
    teacher_cfg = OmegaConf.load(teacher_dir / "config.yaml")
    if "policy" not in teacher_cfg or "train" not in teacher_cfg:
        raise CheckpointError(teacher_dir, "config.yaml holds no train/policy sections to distill with")
    teacher_steps, inference_steps = positive_int(cfg, "teacher_steps"), positive_int(cfg, "inference_steps")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(f"{Path(teacher_cfg.run_dir)}-distilled")
    train_cfg = OmegaConf.merge(
        {k: v for k, v in teacher_cfg.items() if k != "policy_spec"},
        {"train": {k: v for k, v in OmegaConf.to_container(cfg.train).items() if v is not None}, "run_dir": str(run_dir), "resume": bool(cfg.resume),
         "policy": {"inference_steps": inference_steps}})
    if cfg.dataset:
        train_cfg.dataset.path = str(cfg.dataset)
    teacher = teacher.to(resolve_device(train_cfg.train.device))
    try:
        objective = ConsistencyDistillation(teacher, teacher_steps, str(cfg.loss), str(cfg.target))
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    print(f"distilling {teacher_dir} ({teacher.spec.inference_steps}-step teacher, grid of {teacher_steps}) "
          f"into a {inference_steps}-step student -> {run_dir}")
    meta = {"distilled_from": str(teacher_dir.resolve()), "distillation": {"method": "consistency",
                                                                  "teacher_steps": teacher_steps, "loss": str(cfg.loss),
                                                                  "target": str(cfg.target)}}
    checkpoint = Trainer(train_cfg, objective=objective, init_from=teacher, meta=meta).run()
    if checkpoint is not None:
        print(f"checkpoint: {checkpoint.resolve()}")
    return 0


def deploy(cfg: DictConfig) -> int:
    """robot=ros: the ROS 2 node (ros_commands.py); robot=metaworld: a simulated arm in this process."""
    from .deploy.runtime import Runtime, RuntimeSettings
    from .deploy.safety import SafetyFilter, SafetyLimits
    from .policies import Policy

    robot = choice(cfg, "robot", ("ros", "metaworld"))
    try:
        settings = RuntimeSettings(**OmegaConf.to_container(cfg.runtime))
        settings.check()
        limits = SafetyLimits.from_dict(OmegaConf.to_container(cfg.safety))
    except (TypeError, ValueError) as exc:
        raise SettingError(f"runtime/safety settings: {exc}") from None
    if robot == "ros":
        from .ros_commands import deploy_ros

        return deploy_ros(cfg, settings, limits)
    from .envs.metaworld_robot import MetaWorldRobot

    episodes, max_steps, seed = positive_int(cfg, "episodes"), positive_int(cfg, "max_steps"), integer(cfg, "seed")
    policy = Policy.from_checkpoint(cfg.checkpoint, device=cfg.device)
    task = cfg.task or policy.spec.tasks[0]
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint) / "deploy"
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for episode in range(episodes):
        robot = MetaWorldRobot(task, seed=seed + episode, max_episode_steps=max_steps + 1)
        runtime = Runtime(policy, robot, settings, safety=SafetyFilter(limits, policy.spec.action_dim),
                          goal=policy.goal_inputs(task, 1))
        report = runtime.run(max_steps, should_stop=lambda: robot.success)
        report["success"] = robot.success
        robot.close()
        reports.append(report)
        inf, sched = report["inference_ms"], report["schedule"]
        print(f"episode {episode}: success={robot.success} ticks={report['ticks']} rate={report['rate_hz']:.2f} Hz "
              f"inference p50 {inf['p50']:.2f} / p99 {inf['p99']:.2f} ms, jitter p99 "
              f"{report['period_jitter_ms']['p99']:.2f} ms, misses {report['deadline_misses']}, dropped "
              f"{sched['dropped']}, starved {sched['starved']}, late requests {report['late_requests']}, "
              f"safety clamps {report['safety_clamps']} holds {report['safety_holds']}")
    (out / "deploy.json").write_text(json.dumps({"task": task, "settings": OmegaConf.to_container(cfg.runtime),
                                                 "episodes": reports}, indent=2))
    print(f"success {np.mean([r['success'] for r in reports]):.2f} over {episodes} episodes; report: {out / 'deploy.json'}")
    return 0


def run_eval(cfg: DictConfig):
    """Evaluate a checkpoint; writes result.json, success.png and videos. Returns the result.

    Under ``torchrun --nproc_per_node N`` each process runs every N-th episode of each task and
    rank 0 writes the merged result, the same per episode as one process writes."""
    from .policies.distributed import Distributed

    if cfg.env.name == "driving":
        return run_driving_eval(cfg)
    if cfg.env.name == "libero":
        from .benchmark_commands import run_libero_eval
        return run_libero_eval(cfg)
    if cfg.env.name == "calvin":
        from .benchmark_commands import run_calvin_eval
        return run_calvin_eval(cfg)
    dist = Distributed.from_env(str(cfg.device))
    try:
        return _run_eval(cfg, dist)
    finally:
        dist.close()


def run_driving_eval(cfg: DictConfig):
    """A trained planner and the IDM/MOBIL expert on ``episodes`` held-out highway seeds:
    result.json (summaries and per-episode scores), bird's-eye mp4s, the score table."""
    try:
        from .envs.driving.evaluate import EVAL_SEED, evaluate_driving, format_table
    except ImportError as exc:
        raise SettingError(f"env=driving needs highway-env: pip install -e '.[driving]' ({exc})") from None
    from .policies import Policy
    from .policies.distributed import resolve_device

    episodes, videos, seed = positive_int(cfg, "episodes"), integer(cfg, "videos", 0), integer(cfg, "seed")
    steps = optional_positive_int(cfg, "steps")
    policy = Policy.from_checkpoint(cfg.checkpoint, device=resolve_device(str(cfg.device)))
    if policy.spec.action_dim != 16 or policy.spec.horizon != 1:
        raise SettingError(f"{cfg.checkpoint}: a driving planner predicts one 16-number plan (horizon 1, action "
                           f"16); this policy predicts ({policy.spec.horizon}, {policy.spec.action_dim})")
    ckpt, out = Path(cfg.checkpoint), eval_dir(cfg)
    result = evaluate_driving(policy, episodes, steps, seed=EVAL_SEED + seed, video_dir=out / "videos", videos=videos,
                              **driving_env_options(cfg))
    result.update(checkpoint=str(ckpt.resolve()), sampler_steps=steps or policy.spec.inference_steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(format_table({f"planner ({result['sampler_steps']} steps)": result["planner"],
                        "IDM/MOBIL expert": result["expert"]}))
    print(f"results: {out / 'result.json'}")
    return result, out


def _run_eval(cfg: DictConfig, dist):
    from .envs.metaworld_tasks import resolve_tasks
    from .envs.rollout import evaluate, merge_results, plot_success
    from .policies import Policy

    if cfg.env.name != "metaworld":
        raise ValueError(f"env={cfg.env.name!r}: evaluation supports env=metaworld")
    episodes, num_envs = positive_int(cfg, "episodes"), positive_int(cfg, "num_envs")
    max_steps, videos, seed = positive_int(cfg, "env.max_episode_steps"), integer(cfg, "videos", 0), integer(cfg, "seed")
    steps = optional_positive_int(cfg, "steps")
    n_action_steps = optional_positive_int(cfg, "n_action_steps")
    backend, quantize = choice(cfg, "backend", ("torch", "onnx")), choice(cfg, "quantize", (None, "int8"))
    joint_mode = choice(cfg, "joint_mode", ("policy", "plan"))
    if joint_mode != "policy" and backend != "torch":
        raise SettingError(f"joint_mode={joint_mode} runs on backend=torch")
    if backend == "torch":
        if quantize is not None or cfg.onnx_dir is not None:
            raise SettingError("quantize and onnx_dir apply to backend=onnx; pass backend=onnx")
        policy = Policy.from_checkpoint(cfg.checkpoint, device=dist.device)
        if joint_mode != "policy":
            if policy.spec.denoiser["name"] != "joint":
                raise SettingError(f"joint_mode={joint_mode} acts with a joint video-action policy "
                                   f"(policy/denoiser=joint); {cfg.checkpoint} is {policy.spec.denoiser['name']}")
            policy.denoiser.set_act_mode(joint_mode)
    else:
        _require_onnx("eval backend=onnx")
        from .policies.onnx_backend import load_backend

        policy = load_backend(cfg.checkpoint, "onnx", cfg.onnx_dir, quantize,
                              threads=positive_int(cfg, "onnx_threads"))
        batch = min(num_envs, episodes)
        if policy.batch_size is not None and policy.batch_size != batch:
            raise SettingError(f"num_envs={num_envs} runs batches of {batch}, but {policy.export_dir} was exported "
                               f"for batch size {policy.batch_size}: pass num_envs={policy.batch_size}, or an "
                               f"onnx_dir exported with batch_size=null")
    tasks = resolve_tasks(OmegaConf.to_object(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else cfg.tasks) \
        if cfg.tasks else policy.spec.tasks
    out = eval_dir(cfg)
    warm_start, delay = number(cfg, "warm_start", low=0.0, high=0.999), integer(cfg, "delay", 0)
    executor = None
    if delay or cfg.rtc or cfg.blending != "naive":
        from .deploy.simulated_delay import DelayedChunkExecutor

        try:
            executor = DelayedChunkExecutor(policy, min(num_envs, episodes), delay, str(cfg.blending), cfg.rtc,
                                            warm_start, n_action_steps, steps)
        except ValueError as exc:
            raise SettingError(f"delay / blending / rtc: {exc}") from None
    result = evaluate(policy, tasks, episodes=episodes, num_envs=num_envs, max_episode_steps=max_steps,
                      n_action_steps=n_action_steps, steps=steps, seed=seed, video_dir=out / "videos",
                      videos_per_task=videos if dist.is_main else 0, warm_start=warm_start, executor=executor,
                      progress=dist.is_main, shard=(dist.rank, dist.world_size))
    if dist.active:
        result = merge_results(dist.gather(result))
        if not dist.is_main:
            return result, out
    out.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict()
    summary["processes"] = dist.world_size
    summary["realtime"] = {"warm_start": warm_start, "delay": delay, "blending": str(cfg.blending), "rtc": cfg.rtc}
    if executor is not None:
        summary["realtime"].update(schedule=executor.schedule_stats.as_dict(), smoothness=executor.seams.as_dict())
    summary["checkpoint"] = str(Path(cfg.checkpoint).resolve())
    summary["sampler_steps"] = steps or policy.spec.inference_steps
    summary["backend"] = backend if backend == "torch" else f"onnx ({policy.variant}, {policy.export_dir})"
    summary["joint_mode"] = joint_mode
    if backend == "torch" and policy.spec.denoiser["name"] == "joint":
        from .policies.world_model_eval import evaluate_checkpoint, format_report

        summary["world_model"] = evaluate_checkpoint(policy, cfg.checkpoint, out, positive_int(cfg, "world_windows"),
                                                     steps, seed)
        print(format_report(summary["world_model"]))
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    plot_success(result, out / "success.png", title=f"{Path(cfg.checkpoint).name}: success over {cfg.episodes} episodes/task")
    print(result.table())
    if executor is not None:
        seams, sched = executor.seams.as_dict(), executor.schedule_stats
        print(f"delay {delay} steps, {cfg.blending} blending, rtc {cfg.rtc}: seam |da| {seams['seam_jump']:.4f} vs "
              f"within {seams['within_jump']:.4f} (ratio {seams['ratio']:.2f}); {sched.dropped} actions dropped, "
              f"{sched.blended} steps blended, {sched.starved} starved")
    print(f"results: {out / 'result.json'}\nplot:    {out / 'success.png'}")
    if "world_model" in summary:
        print(f"plot:    {summary['world_model']['strip']}")
    for path in (policy.denoiser.write_diagnostics(out) if backend == "torch" else []):
        print(f"plot:    {path}")
    for video in result.videos:
        print(f"video:   {video}")
    return result, out


def eval(cfg: DictConfig) -> int:  # noqa: A001  (the verb's name)
    run_eval(cfg)
    return 0


def _require_onnx(what: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise SettingError(f"{what} needs onnx and onnxruntime ({exc.name} is missing): "
                           f"pip install -e '.[onnx]'") from None


def export(cfg: DictConfig) -> int:
    """Write a checkpoint's policy as ONNX graphs; prints the files and their sizes."""
    choice(cfg, "format", ("onnx",))
    quantize = choice(cfg, "quantize", (None, "int8"))
    batch_size = optional_positive_int(cfg, "batch_size")
    _require_onnx("export format=onnx")
    from .policies.checkpoint import load_policy, resolve_checkpoint
    from .policies.onnx_export import export_onnx, file_sizes

    checkpoint = resolve_checkpoint(cfg.checkpoint)
    policy = load_policy(checkpoint, "cpu", inference_mode="eager")
    checkpoint = checkpoint.resolve()
    out = Path(cfg.out) if cfg.out else checkpoint / "onnx"
    export_onnx(policy, out, batch_size=batch_size, quantize=quantize, checkpoint=checkpoint)
    batch = "dynamic" if batch_size is None else batch_size
    print(f"exported {checkpoint} ({policy.spec.denoiser['name']} denoiser, {policy.spec.process['name']} process) "
          f"to {out}: batch {batch}{', int8 graphs beside fp32' if quantize else ''}")
    for name, size in file_sizes(out).items():
        print(f"  {name:<24} {size / 1024:>10.1f} KiB")
    return 0


def demo(cfg: DictConfig) -> int:
    import time

    from .config import compose
    from .datasets import DemoStore
    from .datasets.summary import summarize
    from .envs.collect import collect as run_collect
    from .envs.collect import format_reports
    from .policies import Policy
    from .policies.latency import measure_chunk_latency
    from .policies.train import train as run_train

    out = Path(cfg.out_dir)
    store = out / "demos.zarr"
    started = time.perf_counter()
    print(f"[1/4] collecting {cfg.episodes} expert episodes per task of {cfg.tasks} -> {store}")
    print(format_reports(run_collect(task=cfg.tasks, episodes=int(cfg.episodes), out=str(store), seed=int(cfg.seed),
                                     overwrite=True)))
    print(summarize(DemoStore.open(store), with_stats=False))

    print(f"\n[2/4] training the default DiT policy on the CPU ({cfg.train.steps} steps)")
    train_cfg = compose("train", [f"dataset.path={store}", f"run_dir={out / 'run'}", f"train.seed={cfg.seed}"]
                        + [f"train.{k}={v}" for k, v in cfg.train.items()])
    checkpoint = run_train(train_cfg)

    print(f"\n[3/4] evaluating {cfg.eval.episodes} episodes per task in Meta-World")
    eval_cfg = compose("eval", [f"checkpoint={out / 'run'}", f"out={out / 'eval'}", f"seed={cfg.seed}"]
                       + [f"{k}={v}" for k, v in cfg.eval.items()])
    result, eval_dir = run_eval(eval_cfg)

    print(f"\n[4/4] inference latency of predict_chunk (batch 1, 2 CPU threads, {cfg.latency_calls} calls)")
    policy = Policy.from_checkpoint(out / "run", device="cpu")
    times = measure_chunk_latency(policy, int(cfg.latency_calls), threads=2)
    latency = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
               "calls": len(times)}
    print(f"{policy.spec.inference_steps} denoising steps: p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")
    (eval_dir / "latency.json").write_text(json.dumps(latency, indent=2))

    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min: mean success {result.mean_success:.3f}")
    print(f"checkpoint: {checkpoint.resolve()}")
    print(f"plot:       {eval_dir / 'success.png'}")
    for video in result.videos:
        print(f"video:      {video}")
    return 0
