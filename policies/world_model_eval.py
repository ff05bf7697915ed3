"""How well a joint video-action policy predicts, on held-out episodes of its store.

For windows of episodes the policy never trained on: the real future frames against the
autoencoder's reconstruction (the ceiling of any latent prediction), video prediction and
forward dynamics (given the recorded actions); and the recorded actions against inverse
dynamics (given the real future frames) and the policy mode; and both, sampled together in
the plan mode (the actions read the imagined frames). Frames are compared per pixel
in [0, 1] (MSE and PSNR), actions in their own units (MSE). A PNG strip shows, per window,
the current frame, the real future and each prediction.

    report = evaluate_world_model(policy, store, held_out_mask, windows=64, strip="strip.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datasets import SequenceSampler, split_episodes
from .joint import JointDenoiser, future_batch_key, predict

FRAME_COLUMNS = ("now", "real future", "autoencoder", "video prediction", "forward dynamics", "plan")


def held_out_mask(store, checkpoint_cfg) -> tuple[np.ndarray, bool]:
    """(episode mask, held out?): the validation episodes of the run's own split (dataset.val_fraction,
    train.seed), or every episode when the run kept none aside."""
    _, val = split_episodes(store.n_episodes, float(checkpoint_cfg.dataset.val_fraction), int(checkpoint_cfg.train.seed))
    return (val, True) if val.any() else (np.ones(store.n_episodes, bool), False)


@torch.inference_mode()
def evaluate_world_model(policy, store, episode_mask: np.ndarray, windows: int = 64, steps: int | None = None,
                         seed: int = 0, strip: str | Path | None = None, strip_rows: int = 6,
                         batch_size: int = 32) -> dict:
    """Prediction errors of a joint policy on ``windows`` random action-labelled windows of the
    masked episodes; writes the PNG ``strip`` (``strip_rows`` windows spread over them, the
    last future frame of each) when given. Returns the metrics."""
    den = policy.denoiser
    if not isinstance(den, JointDenoiser):
        raise ValueError(f"world-model evaluation needs a joint video-action policy (policy/denoiser=joint); "
                         f"this one is {policy.spec.denoiser['name']}")
    spec = policy.spec
    sampler = SequenceSampler(store, obs_keys=spec.obs_keys, n_obs=spec.n_obs, horizon=spec.horizon,
                              episode_mask=episode_mask, future_keys=[den.future_key],
                              future_offsets=den.future_offsets)
    if len(sampler) == 0:
        raise ValueError(f"store {store.path}: no action-labelled windows in the evaluated episodes")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(sampler), size=min(windows, len(sampler)), replace=False))
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    plan_generator = torch.Generator(device=policy.device).manual_seed(seed + 1)     # leaves the others' draws be
    sums = {name: [] for name in ("autoencoder", "video", "forward", "plan", "inverse", "policy", "plan_actions")}
    strip_at = set(np.linspace(0, len(rows) - 1, min(strip_rows, len(rows))).round().astype(int).tolist())
    shown = []                                     # per strip window: its frames, one per FRAME_COLUMNS entry
    for i in range(0, len(rows), batch_size):
        batch = {k: torch.as_tensor(v).to(policy.device) for k, v in sampler.sample_batch(rows[i:i + batch_size]).items()}
        future = batch[future_batch_key(den.future_key)]                          # (B, F, H, W, 3) uint8
        real = future.float() / 255.0
        b, f = future.shape[:2]
        recon = den.autoencoder.decode(den.autoencoder.encode(future.reshape(b * f, *future.shape[2:])))
        frames = {"autoencoder": recon.reshape(real.shape),
                  "video": predict(policy, batch, "video", steps, generator=generator)["frames"],
                  "forward": predict(policy, batch, "forward", steps, actions=batch[spec.action_key],
                                     generator=generator)["frames"]}
        actions = {"inverse": predict(policy, batch, "inverse", steps, future=future, generator=generator)["actions"],
                   "policy": predict(policy, batch, "policy", steps, generator=generator)["actions"]}
        plan = predict(policy, batch, "plan", steps, generator=plan_generator)
        frames["plan"], actions["plan_actions"] = plan["frames"], plan["actions"]
        for name, value in frames.items():
            sums[name].append(((value - real) ** 2).mean(dim=(1, 2, 3, 4)).cpu())
        for name, value in actions.items():
            sums[name].append(((value - batch[spec.action_key].float()) ** 2).mean(dim=(1, 2)).cpu())
        now = batch[den.future_key][:, -1].float() / 255.0                        # the current frame (B, H, W, 3)
        columns = [now, real[:, -1], *(v[:, -1] for v in frames.values())]
        shown += [[c[j - i].cpu().numpy() for c in columns] for j in sorted(strip_at) if i <= j < i + b]
    report = {"windows": int(len(rows)), "future_offsets": den.future_offsets,
              "sampler_steps": steps or spec.inference_steps}
    for name in ("autoencoder", "video", "forward", "plan"):
        mse = float(torch.cat(sums[name]).mean())
        report[name] = {"mse": mse, "psnr": 10.0 * np.log10(1.0 / max(mse, 1e-12))}
    for name in ("inverse", "policy"):
        report[name] = {"action_mse": float(torch.cat(sums[name]).mean())}
    report["plan"]["action_mse"] = float(torch.cat(sums["plan_actions"]).mean())
    if strip is not None:
        write_strip([np.stack(column) for column in zip(*shown)], Path(strip))
        report["strip"] = str(strip)
    return report


def write_strip(columns: list[np.ndarray], path: Path) -> None:
    """A grid PNG: one row per window, one column per entry of ``FRAME_COLUMNS`` (frames in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(columns[0])
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False)
    for r in range(rows):
        for c, frames in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(np.clip(frames[r], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(FRAME_COLUMNS[c], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_checkpoint(policy, checkpoint: str | Path, out: Path, windows: int = 64, steps: int | None = None,
                        seed: int = 0) -> dict:
    """``evaluate_world_model`` on the held-out episodes of the store a checkpoint trained on
    (its meta.json names it); writes ``<out>/world_model.png``. Returns the report with
    ``held_out`` (False when the run kept no episode aside)."""
    from ..datasets import DemoStore
    from .checkpoint import read_spec, resolve_checkpoint

    cfg, _, meta = read_spec(resolve_checkpoint(checkpoint))
    store_path = meta.get("data", {}).get("store")
    if not store_path or not Path(store_path).exists():
        raise ValueError(f"{checkpoint}: the store it trained on ({store_path}) is not here; the world-model "
                         f"evaluation reads its held-out episodes")
    store = DemoStore.open(store_path)
    mask, held_out = held_out_mask(store, cfg)
    report = evaluate_world_model(policy, store, mask, windows, steps, seed, strip=out / "world_model.png")
    report.update(held_out=held_out, store=str(store_path))
    return report


def format_report(report: dict) -> str:
    lines = [f"world model on {report['windows']} held-out windows ({report['sampler_steps']} sampler steps):",
             f"  {'prediction':<18} {'pixel MSE':>10} {'PSNR dB':>8}"]
    for name, label in (("autoencoder", "autoencoder"), ("video", "video prediction"), ("forward", "forward dynamics"),
                        ("plan", "plan")):
        lines.append(f"  {label:<18} {report[name]['mse']:>10.5f} {report[name]['psnr']:>8.2f}")
    lines.append(f"  action MSE: inverse dynamics {report['inverse']['action_mse']:.4f}, "
                 f"policy {report['policy']['action_mse']:.4f}, plan {report['plan']['action_mse']:.4f}")
    return "\n".join(lines)
