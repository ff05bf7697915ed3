"""The training loop (``ditpolicy train``).

Seeded; AdamW with warm-up + cosine, gradient clipping, EMA weights, bf16/fp16 autocast on
CUDA; progress bar with loss and samples/s; TensorBoard logs and metrics.jsonl; periodic validation loss,
rollouts and checkpoints; ``resume=true`` continues from ``<run>/checkpoints/latest`` with
the same step, optimiser, scheduler, EMA and RNG states.

Under ``torchrun --nproc_per_node N`` the same loop runs on every process (DDP, or FSDP with
``train.distributed.strategy=fsdp``). ``train.batch_size`` is the *global* batch: each step
draws its rows and a noise seed from one seeded stream that every rank holds, and splits the
rows into N x ``train.grad_accum`` equal pieces; the noise of every sample is cut from
draws for the whole batch (batch_random.py). The loss of a step is therefore the same for
any number of processes and micro-batches, and a run resumes with another world size.
Rank 0 alone logs, validates, rolls out and writes checkpoints (in the single-process layout).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..datasets import DemoStore, Normalizer, SequenceSampler, compute_stats, split_episodes
from ..datasets.loader import StepBatches, step_draws, step_loader
from ..progress import progress_bar
from ..settings import SettingError, choice, integer, number, positive_int
from .checkpoint import LATEST, CheckpointError, check_state, load_train_state, point_latest, save_checkpoint
from .batch_random import shard_of_batch
from .distributed import BACKENDS, Distributed
from .optim import EMA, make_optimizer, warmup_cosine
from .parallel_model import (STRATEGIES, ObjectiveModule, full_state, full_tensor, gradient_sync, is_sharded,
                             load_optimizer_state, optimizer_state, shard_like, wrap)
from .policy import DiffusionPolicy
from .spec import PolicySpec


# settings that configs written before they existed lack (a distillation merges its teacher's)
TRAIN_DEFAULTS = {"train": {"grad_accum": 1, "distributed": {"strategy": "ddp", "backend": "auto",
                                                             "find_unused_parameters": False}},
                  "dataset": {"loader": {"workers": 0, "prefetch": 2}}}


class TrainingDiverged(ValueError):
    """The loss or the gradient stopped being finite; no checkpoint of that state is written."""


def check_train_settings(cfg: DictConfig) -> None:
    """Every count and rate of the train config, each error naming its key."""
    for key in ("train.steps", "train.batch_size", "train.save_every", "train.log_every", "train.keep_checkpoints",
                "train.grad_accum"):
        positive_int(cfg, key)
    for key in ("train.warmup_steps", "train.val_every", "train.num_threads", "train.rollout.every",
                "train.rollout.episodes", "train.seed"):
        integer(cfg, key, minimum=0)
    positive_int(cfg, "train.rollout.num_envs")
    choice(cfg, "train.distributed.strategy", STRATEGIES)
    choice(cfg, "train.distributed.backend", BACKENDS)
    number(cfg, "train.lr", low=0.0)
    number(cfg, "train.weight_decay", low=0.0)
    number(cfg, "train.grad_clip", low=0.0)
    number(cfg, "train.ema_decay", low=0.0, high=1.0)
    number(cfg, "train.min_lr_ratio", low=0.0, high=1.0)
    number(cfg, "dataset.val_fraction", low=0.0, high=0.99)
    number(cfg, "dataset.image_cache_gb", low=0.0)
    integer(cfg, "dataset.loader.workers", minimum=0)
    positive_int(cfg, "dataset.loader.prefetch")


def micro_batch_size(cfg: DictConfig, world_size: int) -> int:
    """Samples per forward pass: the global batch over processes x accumulation steps."""
    total, accum = int(cfg.train.batch_size), int(cfg.train.grad_accum)
    if total % (world_size * accum):
        raise SettingError(f"train.batch_size={total} (the global batch) must split evenly over {world_size} "
                           f"process(es) x train.grad_accum={accum}: pass a multiple of {world_size * accum}")
    return total // (world_size * accum)


def data_fingerprint(store: DemoStore) -> str:
    """sha256 over the episode boundaries, key shapes and task table of a store."""
    h = hashlib.sha256(store.episode_ends.tobytes())
    h.update(json.dumps([store.shapes(), store.tasks], sort_keys=True).encode())
    return h.hexdigest()[:16]


def build_spec(cfg: DictConfig, store: DemoStore) -> PolicySpec:
    """The policy spec from the policy config and the shapes and tasks of the store."""
    obs_keys = list(cfg.dataset.obs_keys)
    for key in obs_keys + ["action"]:
        store.array(key)  # names the store and key when absent
    shapes = store.shapes()
    return PolicySpec.from_config(
        OmegaConf.to_container(cfg.policy, resolve=True), {k: list(shapes[k][0]) for k in obs_keys},
        [k for k in obs_keys if k in store.image_keys], shapes["action"][0][0], store.tasks)


def to_torch(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy arrays or (pinned) tensors -> tensors on ``device``."""
    return {k: (v if torch.is_tensor(v) else torch.from_numpy(np.ascontiguousarray(v))).to(device, non_blocking=True)
            for k, v in batch.items()}


def fit_stage(module: torch.nn.Module, loss_fn, data: np.ndarray, steps: int, batch_size: int, lr: float,
              seed: int = 0, progress: bool = True, desc: str = "stage") -> float:
    """A training stage before the main loop, for a part a family fits on its own (the joint
    family's frame autoencoder): AdamW with a cosine decay on ``module``'s parameters, over
    random batches of ``data`` (N, ...) held in memory, ``loss_fn(batch tensor) -> scalar``.
    Returns the mean loss of the last 50 steps."""
    if len(data) == 0:
        raise ValueError(f"{desc}: no data to train on")
    device = next(module.parameters()).device
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(0, steps))
    module.train()
    recent: list[float] = []
    bar = progress_bar(total=steps, desc=desc, unit="step", disable=not progress)
    for step in range(steps):
        rows = rng.integers(0, len(data), min(batch_size, len(data)))
        loss = loss_fn(torch.from_numpy(data[rows]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [float(loss.detach())])[-50:]
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(recent):.4f}", refresh=False)
    bar.close()
    module.eval()
    return float(np.mean(recent))


def default_objective(policy: DiffusionPolicy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The policy's own loss: its process's and family's named, weighted terms."""
    return policy.compute_loss(batch)


class Trainer:
    """One training loop for every objective.

    ``objective(policy, batch) -> (loss, logs)`` is the policy's own loss by default; a second
    stage (distill.py) passes its own. ``init_from``: a checkpoint (or a policy loaded from
    one) whose EMA weights start the run (ignored when resuming). ``meta``: extra entries for every checkpoint's meta.json."""

    def __init__(self, cfg: DictConfig, objective=None, init_from: str | Path | DiffusionPolicy | None = None,
                 meta: dict | None = None):
        cfg = OmegaConf.merge(TRAIN_DEFAULTS, cfg)
        check_train_settings(cfg)
        self.cfg = cfg
        self.objective = objective or default_objective
        self.extra_meta = dict(meta or {})
        t = cfg.train
        dist_cfg = t.distributed
        self.dist = Distributed.from_env(str(t.device), str(dist_cfg.backend))
        self.device = self.dist.device
        self.accum = int(t.grad_accum)
        self.micro = micro_batch_size(cfg, self.dist.world_size)
        if t.num_threads > 0:
            torch.set_num_threads(int(t.num_threads))
        torch.manual_seed(int(t.seed))
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.store = DemoStore.open(cfg.dataset.path, cache_dir=cfg.dataset.get("cache_dir"))
        stats = self.store.stats or compute_stats(self.store)
        train_mask, val_mask = split_episodes(self.store.n_episodes, float(cfg.dataset.val_fraction), int(t.seed))
        self.spec = build_spec(cfg, self.store)
        normalizer = Normalizer.from_stats(stats, self.spec.normalize)
        self.policy = DiffusionPolicy(self.spec, normalizer).to(self.device)
        cache_gb = 0.0 if int(cfg.dataset.loader.workers) > 0 else float(cfg.dataset.image_cache_gb)  # workers decode
        sampler_args = dict(obs_keys=self.spec.obs_keys, n_obs=self.spec.n_obs, horizon=self.spec.horizon,
                            image_cache_bytes=int(cache_gb * (1 << 30)), **self.policy.denoiser.sampler_options())
        self.train_sampler = SequenceSampler(self.store, episode_mask=train_mask, **sampler_args)
        self.val_sampler = SequenceSampler(self.store, episode_mask=val_mask, **sampler_args) if val_mask.any() else None
        if len(self.train_sampler) == 0:
            raise ValueError(f"store {self.store.path}: no training windows (no episodes with actions?)")
        if init_from is not None and not cfg.resume:
            self._init_weights(init_from)
        resumed = self._read_resume() if cfg.resume else None
        if resumed is not None:
            self.policy.load_state_dict(resumed[0])
        elif init_from is None:
            if self.policy.process_state is not None:
                self._fit_process(train_mask)
            self.policy.denoiser.fit(self.store, train_mask, int(t.seed),
                                     partial(fit_stage, seed=int(t.seed), progress=bool(t.progress) and self.dist.is_main))
        # FSDP keeps shards only; rank 0 loads the gathered weights into this copy to save and validate
        fsdp = self.dist.active and dist_cfg.strategy == "fsdp"
        self.replica = copy.deepcopy(self.policy) if fsdp and self.dist.is_main else None
        self.model = wrap(ObjectiveModule(self.policy, self.objective), str(dist_cfg.strategy), self.dist,
                          bool(dist_cfg.find_unused_parameters))
        self.sharded = is_sharded(self.model)
        self.ema = EMA(self.policy, float(t.ema_decay))
        self.optimizer = make_optimizer(self.policy, float(t.lr), float(t.weight_decay), tuple(t.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(int(t.warmup_steps), int(t.steps), float(t.min_lr_ratio)))
        self.step = 0
        self._sampler_args = dict(sampler_args, episode_mask=train_mask)
        self.autocast = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        if resumed is not None:
            self._apply_resume(*resumed)

    # ------------------------------------------------------------------ state
    def _autocast_dtype(self):
        precision = self.cfg.train.precision
        if self.device.type != "cuda" or precision == "fp32":
            return None
        if precision in ("auto", "bf16"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16

    def _fit_process(self, train_mask: np.ndarray) -> None:
        """The process's state (anchors) from a seeded subset of the training chunks, the same
        on every rank."""
        process, spec = self.policy.process, self.spec
        sampler = SequenceSampler(self.store, obs_keys=[], n_obs=spec.n_obs, horizon=spec.horizon,
                                  episode_mask=train_mask)
        rng = np.random.default_rng(int(self.cfg.train.seed))
        count = min(len(sampler), int(getattr(process, "fit_chunks", len(sampler))))
        rows = np.sort(rng.choice(len(sampler), size=count, replace=False))
        actions = torch.as_tensor(sampler.sample_batch(rows)[spec.action_key], dtype=torch.float32)
        process.fit(self.policy.normalizer.normalize(spec.action_key, actions), int(self.cfg.train.seed))
        self.say(f"{process.name}: fitted from {count} training chunks")

    def _init_weights(self, source: str | Path | DiffusionPolicy) -> None:
        """Start from a checkpoint's EMA weights, or from an already loaded policy's."""
        from .checkpoint import load_policy

        where = "the policy to start from" if isinstance(source, DiffusionPolicy) else f"checkpoint {source}"
        if not isinstance(source, DiffusionPolicy):
            source = load_policy(source, "cpu", use_ema=True)
        try:
            check_state(self.policy.state_dict(), source.state_dict(), "ema.safetensors")
        except ValueError as exc:
            raise ValueError(f"{where}: cannot start from it: {exc}") from None
        self.policy.load_state_dict(source.state_dict())     # copies: the source stays untouched

    def _read_resume(self) -> tuple | None:
        """(model state, train info, EMA state, path) of the latest checkpoint, checked against the policy."""
        latest = self.ckpt_dir / LATEST
        seen = self.dist.gather(latest.resolve().name if latest.exists() else None)
        if len(set(seen)) > 1:
            raise ValueError(f"resume: the processes see different checkpoints under {self.ckpt_dir} ({seen}); "
                             f"run_dir must be on a file system that every node shares")
        if not latest.exists():
            self.say(f"resume: no checkpoint under {self.ckpt_dir}, starting from step 0")
            return None
        model_state, info, ema_state = load_train_state(latest)
        for name, state in (("model.safetensors", model_state), ("ema.safetensors", ema_state)):
            try:
                check_state(self.policy.state_dict(), state, name)
            except ValueError as exc:
                raise CheckpointError(latest.resolve(), f"cannot resume: {exc} (was the run trained with other "
                                                        f"policy settings? resume with those, or train into a "
                                                        f"new run_dir)") from None
        return model_state, info, ema_state, latest

    def _apply_resume(self, model_state: dict, info: dict, ema_state: dict, latest: Path) -> None:
        """Optimiser, scheduler, EMA and RNG states of a checkpoint (the weights are already in)."""
        self.ema.state = (shard_like(ema_state, self.ema.state) if self.sharded
                          else {k: v.to(self.device) for k, v in ema_state.items()})
        self.ema.updates = int(info["ema_updates"])
        load_optimizer_state(self.model, self.optimizer, info["optimizer"])
        self.scheduler.load_state_dict(info["scheduler"])
        torch.set_rng_state(info["torch_rng"])
        self.step = int(info["step"])
        self.say(f"resumed from {latest.resolve().name} at step {self.step}")

    def say(self, text: str) -> None:
        """Print on rank 0 only."""
        if self.dist.is_main:
            print(text)

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank must call it, FSDP gathers the shards)."""
        ema_state = full_state(self.ema.state) if self.sharded else self.ema.state
        policy = self._whole_policy(full_state(self.policy.state_dict()) if self.sharded else None)
        optimizer = optimizer_state(self.model, self.optimizer)
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        train_state = {
            "step": self.step, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "ema_updates": self.ema.updates,
        }
        meta = {"step": self.step, "data": {"store": str(self.store.path), "fingerprint": data_fingerprint(self.store),
                                            "episodes": self.store.n_episodes, "steps": self.store.n_steps},
                **self.extra_meta}
        target = save_checkpoint(self.ckpt_dir / f"step_{self.step:07d}", policy, ema_state, self.cfg, meta,
                                 train_state)
        point_latest(self.ckpt_dir, target, keep_last=int(self.cfg.train.keep_checkpoints))
        self.dist.barrier()
        return target

    def _whole_policy(self, state: dict | None) -> DiffusionPolicy | None:
        """The trained policy whole: itself, or under FSDP rank 0's replica loaded with ``state``."""
        if not self.sharded:
            return self.policy
        if self.replica is not None:
            self.replica.load_state_dict(state)
        return self.replica

    def ema_policy(self) -> DiffusionPolicy | None:
        """A copy of the policy with the EMA weights; None on ranks other than 0 (every rank
        must call it under FSDP, which gathers the shards)."""
        state = full_state(self.ema.state) if self.sharded else self.ema.state
        base = self._whole_policy(None)
        if base is None or not self.dist.is_main:
            return None
        policy = copy.deepcopy(base)
        policy.load_state_dict(state)
        return policy.eval()

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: dict | None = None, waited_ms: float = 0.0) -> dict[str, float]:
        """One optimiser step over the global batch: this rank's ``grad_accum`` pieces of it,
        gradients averaged over all ranks. ``batch``: this rank's rows of the step's batch when
        a loader gathered them (``StepBatches``, ``waited_ms`` waiting for it); gathered here
        otherwise. Returns the logs averaged over the whole batch, with ``data_ms``, the time
        spent getting the batch."""
        t = self.cfg.train
        total = int(t.batch_size)
        rows, noise_seed = step_draws(int(t.seed), self.step, self.train_sampler, total)
        mine = self.dist.rank * self.accum * self.micro
        begin = time.perf_counter()
        if batch is None:
            batch = self.train_sampler.sample_batch(rows[mine:mine + self.accum * self.micro])
        batch = to_torch(batch, self.device)
        data_ms = (time.perf_counter() - begin) * 1e3 + waited_ms
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for j in range(self.accum):
            start = mine + j * self.micro
            piece = {k: v[j * self.micro:(j + 1) * self.micro] for k, v in batch.items()}
            with gradient_sync(self.model, j == self.accum - 1):
                with shard_of_batch(noise_seed, start, start + self.micro, total), \
                        torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    loss, terms = self.model(piece)
                terms = self.dist.mean(terms)
                if not np.isfinite(terms["loss"]):
                    self._diverged(f"loss is {terms['loss']}", rows, terms)
                self.scaler.scale(loss / self.accum).backward()
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + v / self.accum
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float(t.grad_clip))
        logs["grad_norm"] = float(full_tensor(norm))
        if not np.isfinite(logs["grad_norm"]) and not self.scaler.is_enabled():  # fp16 skips such steps itself
            self._diverged(f"gradient norm is {logs['grad_norm']}", rows, logs)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.policy)
        self.step += 1
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["data_ms"] = data_ms
        return logs

    def _diverged(self, what: str, rows: np.ndarray, logs: dict) -> None:
        starts = self.train_sampler.windows[rows, 0]
        episodes = np.unique(np.searchsorted(self.store.episode_ends, starts, side="right"))
        terms = ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith("loss/"))
        raise TrainingDiverged(
            f"step {self.step + 1}: {what} ({terms}); the batch drew from episodes {episodes[:20].tolist()} of "
            f"{self.store.path}. Training stopped; the last checkpoint written is the last finite one.")

    @torch.no_grad()
    def validation_loss(self, policy: DiffusionPolicy | None = None, batches: int = 8) -> float | None:
        """Loss of the EMA policy (or ``policy``) on fixed validation batches; None without
        validation episodes or on ranks other than 0."""
        if self.val_sampler is None or len(self.val_sampler) == 0:
            return None
        policy = policy or self.ema_policy()
        if policy is None:
            return None
        gen = np.random.default_rng(12345)
        cpu_rng = torch.get_rng_state()
        torch.manual_seed(12345)
        losses = []
        for _ in range(batches):
            rows = self.val_sampler.draw(gen, int(self.cfg.train.batch_size))
            losses.append(float(self.objective(policy, to_torch(self.val_sampler.sample_batch(rows), self.device))[0]))
        torch.set_rng_state(cpu_rng)  # validation must not shift the training RNG stream
        return float(np.mean(losses))

    def rollout(self, policy: DiffusionPolicy | None = None) -> dict | None:
        """Success of the EMA policy (or ``policy``) in simulation; None when off or not rank 0."""
        r = self.cfg.train.rollout
        if int(r.episodes) <= 0:
            return None
        policy = policy or self.ema_policy()
        if policy is None:
            return None
        from ..envs.rollout import evaluate

        cpu_rng = torch.get_rng_state()
        result = evaluate(policy, self.spec.tasks, episodes=int(r.episodes), num_envs=int(r.num_envs),
                          max_episode_steps=int(self.cfg.env.max_episode_steps), progress=False)
        torch.set_rng_state(cpu_rng)
        return result

    def run(self) -> Path | None:
        """Train to ``train.steps``; returns the latest checkpoint (None on ranks other than 0).
        Ends the process group it started."""
        try:
            latest = self._loop()
            return latest if self.dist.is_main else None
        finally:
            self.dist.close()

    def _loop(self) -> Path:
        t = self.cfg.train
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.cfg, self.run_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(self.run_dir / "tb")) if main else None
        metrics = (self.run_dir / "metrics.jsonl").open("a") if main else None
        total = int(t.steps)
        n_params = sum(p.numel() for p in self.policy.parameters())
        where = (f"{self.dist.world_size} processes ({t.distributed.strategy}, {self.device.type})" if self.dist.active
                 else str(self.device))
        self.say(f"training {n_params / 1e6:.2f} M parameters on {where}: {len(self.train_sampler)} windows, "
                 f"{total} steps of batch {t.batch_size} ({self.micro} per forward pass) -> {self.run_dir}")
        bar = progress_bar(total=total, initial=self.step, desc="train", unit="step", disable=not (t.progress and main))
        batches = self._step_batches(total)
        window_start, window_samples = time.perf_counter(), 0
        while self.step < total:
            batch, waited_ms = None, 0.0
            if batches is not None:
                begin = time.perf_counter()
                batch = next(batches)
                waited_ms = (time.perf_counter() - begin) * 1e3
            logs = self.train_step(batch, waited_ms)
            window_samples += int(t.batch_size)
            bar.update(1)
            if main and (self.step % int(t.log_every) == 0 or self.step == total):
                rate = window_samples / (time.perf_counter() - window_start)
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{logs['loss']:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
                for k, v in logs.items():
                    tb.add_scalar(f"train/{k}", v, self.step)
                tb.add_scalar("train/samples_per_s", rate, self.step)
                metrics.write(json.dumps({"step": self.step, **logs, "samples_per_s": rate}) + "\n")
                metrics.flush()
            validate = int(t.val_every) > 0 and (self.step % int(t.val_every) == 0 or self.step == total)
            roll = int(t.rollout.every) > 0 and self.step % int(t.rollout.every) == 0
            if validate or roll:
                self._evaluate_ema(validate, roll, bar, tb)
            if self.step % int(t.save_every) == 0 or self.step == total:
                self.save()
        bar.close()
        if tb is not None:
            tb.close()
            metrics.close()
        return self.ckpt_dir / LATEST

    def _step_batches(self, total: int):
        """Batches of the remaining steps from loader workers, or None to gather in-process."""
        workers = int(self.cfg.dataset.loader.workers)
        if workers == 0 or self.step >= total:
            return None
        size = self.accum * self.micro
        lo = self.dist.rank * size
        batches = StepBatches(str(self.cfg.dataset.path), self.cfg.dataset.get("cache_dir"),
                              {**self._sampler_args, "image_cache_bytes": 0}, int(self.cfg.train.seed),
                              int(self.cfg.train.batch_size), lo, lo + size)
        return step_loader(batches, self.step, total, workers, int(self.cfg.dataset.loader.prefetch),
                           pin_memory=self.device.type == "cuda")

    def _evaluate_ema(self, validate: bool, roll: bool, bar, tb) -> None:
        """Validation loss and / or rollouts of the EMA weights on rank 0; the others wait."""
        policy = self.ema_policy()
        if policy is not None:
            val = self.validation_loss(policy) if validate else None
            if val is not None:
                tb.add_scalar("val/loss", val, self.step)
                bar.write(f"step {self.step}: validation loss {val:.4f}")
            result = self.rollout(policy) if roll else None
            if result:
                tb.add_scalar("rollout/success", result.mean_success, self.step)
                bar.write(f"step {self.step}: rollout success {result.mean_success:.3f}")
        self.dist.barrier()


def train(cfg: DictConfig) -> Path | None:
    """Train from a composed config; returns the path of the last checkpoint (None on ranks
    other than 0 under torchrun)."""
    return Trainer(cfg).run()
