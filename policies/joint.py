"""Joint video-action denoising (``policy/denoiser=joint``, UWM / PAD).

One DiT denoises two streams side by side: the H action tokens and M tokens of the camera
frames that follow the current step (``future_offsets`` steps later), each frame a latent
grid of a small autoencoder the trainer fits on the store first (autoencoder.py), cut into
``patch`` x ``patch`` cells per token. Self-attention runs over both streams; each token is
modulated by its own stream's noise level, drawn independently in training.

A stream at maximum noise carries no information, so here it is *absent*: its tokens are left
out of the sequence at inference, and in training no token reads them (an absent stream) or
the actions do not (a policy row, below). The choice of levels then picks what the one
network is (``MODES``):

    policy            actions sampled, video absent: exactly the plain DiT's work per step
    video             video sampled, actions absent: predict the future frames
    forward           video sampled, actions given clean (level 0): forward dynamics
    inverse           actions sampled, video given clean (level 0): inverse dynamics
    plan              actions and video sampled together at one level (PAD): the actions read
                      the frames they are imagined with

The policy acts in ``policy`` mode, or in ``plan`` mode after ``set_act_mode("plan")``
(``ditpolicy eval joint_mode=plan``), at the cost of the frame tokens in every step.

Training: every labelled sample draws t_a and t_v and denoises both streams. In a share
``policy_share`` of them the action tokens do not read the frame tokens (the frames still read
the actions): their action prediction is exactly the policy mode's, so the policy trains on
most rows as the plain DiT does while the frames train on every row. The other rows train
inverse dynamics (actions read frames at any level); a share ``action_absent`` leaves the actions
out (video prediction). Action-free episodes of the store (``action_free``) train the video
stream alone: their actions are absent, out of the loss and out of every gradient;
``action_free_share`` caps their share of each batch, so that plentiful video does not crowd
out the labelled windows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import batch_random
from .autoencoder import FrameAutoencoder
from .denoiser import ACTION_ROWS, DENOISERS
from .dit import DiTDenoiser, modulate, timestep_embedding

MODES = {             # mode -> (stream sampled, stream given clean or None)
    "policy": ("action", None),
    "video": ("video", None),
    "forward": ("video", "action"),
    "inverse": ("action", "video"),
    "plan": ("both", None),
}
ACT_MODES = ("policy", "plan")


def future_batch_key(key: str) -> str:
    """The batch key of the future frames (B, F, H, W, 3) of camera ``key``."""
    return f"future_{key}"


@DENOISERS.register("joint")
class JointDenoiser(DiTDenoiser):
    """Action tokens (B, H, A) and future-frame latent tokens (B, M, P) in one DiT.

    M = F * (h / patch) * (w / patch) for F future frames of latent (C, h, w); P = C * patch^2.
    ``forward(x_t, t, prepared)`` is the policy mode (the DiT's own forward over the action
    tokens alone); ``joint(...)`` runs any mix of streams."""

    def __init__(self, action_dim: int, horizon: int, d_model: int, obs_shapes: dict, n_layers: int, n_heads: int,
                 mlp_ratio: float, dropout: float, future_key: str | None, future_offsets: list[int] | None,
                 latent_channels: int, patch: int, autoencoder: dict, action_free: bool, policy_share: float,
                 action_absent: float, action_free_share: float | None = None):
        super().__init__(action_dim, horizon, d_model, n_layers, n_heads, mlp_ratio, dropout)
        cameras = [k for k, s in obs_shapes.items() if len(s) == 3 and s[-1] == 3]
        key = future_key or (cameras[0] if cameras else None)
        if key not in cameras:
            raise ValueError(f"policy.denoiser.future_key={future_key!r}: the joint family predicts frames of one of "
                             f"the policy's cameras (dataset.obs_keys holds {cameras or 'none'})")
        self.future_key = key
        self.future_offsets = [int(o) for o in (future_offsets or [horizon])]
        if any(o < 1 for o in self.future_offsets):
            raise ValueError(f"policy.denoiser.future_offsets must be steps after the current one (>= 1), "
                             f"got {self.future_offsets}")
        for name, share in (("policy_share", policy_share), ("action_absent", action_absent)):
            if not 0.0 <= float(share) < 1.0:
                raise ValueError(f"policy.denoiser.{name} must be in [0, 1), got {share}")
        self.policy_share, self.action_absent = float(policy_share), float(action_absent)
        self.action_free = bool(action_free)
        self.action_free_share = None if action_free_share is None else float(action_free_share)
        ae_options = dict(autoencoder)
        self.ae_training = {k: ae_options.pop(k) for k in ("steps", "batch_size", "lr", "frames")}
        self.autoencoder = FrameAutoencoder(tuple(obs_shapes[key]), int(latent_channels), tuple(ae_options["widths"]))
        self.autoencoder.requires_grad_(False)      # fitted before training, then frozen
        c, h, w = self.autoencoder.latent_shape
        if h % patch or w % patch:
            raise ValueError(f"policy.denoiser.patch={patch} does not divide the {h} x {w} latent grid of "
                             f"{key} frames {tuple(obs_shapes[key])}")
        self.patch = int(patch)
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.video_tokens_per_frame = (h // patch) * (w // patch)
        n_video = len(self.future_offsets) * self.video_tokens_per_frame
        self.video_in = nn.Linear(c * patch * patch, d_model)
        self.video_position = nn.Parameter(torch.randn(1, n_video, d_model) * 0.02)
        self.video_out = nn.Linear(d_model, c * patch * patch)
        nn.init.zeros_(self.video_out.weight)
        nn.init.zeros_(self.video_out.bias)
        self.act_mode = "policy"

    def set_act_mode(self, mode: str) -> "JointDenoiser":
        """The inference mode the policy acts in: ``policy`` (video absent, the DiT's cost) or
        ``plan`` (actions denoised together with the future frames)."""
        if mode not in ACT_MODES:
            raise ValueError(f"joint act mode must be one of {ACT_MODES}, got {mode!r}")
        self.act_mode = mode
        return self

    @property
    def samples_actions(self) -> bool:
        return self.act_mode == "plan"

    def sample_actions(self, policy, batch, steps, noise, generator):
        return predict(policy, batch, "plan", steps, generator=generator, noise=noise)["actions"]

    # ------------------------------------------------------------------ data
    def sampler_options(self) -> dict:
        return {"future_keys": [self.future_key], "future_offsets": self.future_offsets,
                "action_free": self.action_free, "action_free_share": self.action_free_share}

    def fit(self, store, episode_mask: np.ndarray, seed: int, run_stage) -> None:
        """Train the autoencoder on frames of the training episodes (action-free ones too when
        they train the video stream) with the trainer's ``run_stage``, then the per-channel
        latent statistics."""
        keep = np.asarray(episode_mask, bool) & (store.has_action | self.action_free)
        steps = np.concatenate([np.arange(s, e) for s, e, k in zip(store.episode_starts, store.episode_ends, keep) if k])
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(steps, size=min(len(steps), int(self.ae_training["frames"])), replace=False))
        frames = np.asarray(store.array(self.future_key).get_orthogonal_selection((rows,)))
        torch.manual_seed(seed)
        self.autoencoder.requires_grad_(True)
        run_stage(self.autoencoder, self.autoencoder.reconstruction_loss, frames, int(self.ae_training["steps"]),
                  int(self.ae_training["batch_size"]), float(self.ae_training["lr"]), desc="autoencoder")
        self.autoencoder.requires_grad_(False)
        device = self.latent_mean.device
        with torch.no_grad():
            z = torch.cat([self.autoencoder.encode(torch.from_numpy(frames[i:i + 256]).to(device))
                           for i in range(0, len(frames), 256)])
        self.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-3))

    # ------------------------------------------------------------------ video tokens
    @torch.no_grad()
    def video_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Future frames (B, F, H, W, 3) uint8 -> normalised latent tokens (B, M, P)."""
        b, f = frames.shape[:2]
        z = self.autoencoder.encode(frames.reshape(b * f, *frames.shape[2:]))
        z = (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]
        p = self.patch
        cells = F.unfold(z, kernel_size=p, stride=p)                      # (B * F, C * p * p, cells)
        return cells.transpose(1, 2).reshape(b, f * cells.shape[-1], -1)

    @torch.no_grad()
    def decode_video(self, tokens: torch.Tensor) -> torch.Tensor:
        """Latent tokens (B, M, P) -> frames (B, F, H, W, 3) float in [0, 1]."""
        b = tokens.shape[0]
        f = len(self.future_offsets)
        c, h, w = self.autoencoder.latent_shape
        cells = tokens.reshape(b * f, self.video_tokens_per_frame, -1).transpose(1, 2)
        z = F.fold(cells, output_size=(h, w), kernel_size=self.patch, stride=self.patch)
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.autoencoder.decode(z).reshape(b, f, *self.autoencoder.image_shape)

    # ------------------------------------------------------------------ network
    def joint(self, actions: torch.Tensor | None, t_action: torch.Tensor | None, video: torch.Tensor | None,
              t_video: torch.Tensor | None, prepared: dict, action_rows: torch.Tensor | None = None,
              video_rows: torch.Tensor | None = None, actions_read_video: torch.Tensor | None = None
              ) -> dict[str, torch.Tensor]:
        """Predictions for the streams given: actions (B, H, A) at t_action (B,) or (B, H);
        video (B, M, P) at t_video (B,) or (B, M); None leaves a stream out. ``action_rows`` /
        ``video_rows`` (B,) bool mark the samples where a given stream is present (training:
        absent rows are masked out of attention); ``actions_read_video`` (B,) bool, where False
        the action tokens do not attend to the frame tokens (which still attend to them).
        Returns {"action": ..., "video": ...}."""
        pooled = prepared["pooled"]
        tokens, levels, present, sizes = [], [], [], {}
        for name, x, t, rows in (("action", actions, t_action, action_rows), ("video", video, t_video, video_rows)):
            if x is None:
                continue
            n = x.shape[1]
            embed = (self.action_in(x) + self.position[:, :n] if name == "action"
                     else self.video_in(x) + self.video_position[:, :n])
            tokens.append(embed)
            levels.append(t[:, None].expand(-1, n) if t.dim() == 1 else t)
            present.append(torch.ones(x.shape[0], n, dtype=torch.bool, device=x.device) if rows is None
                           else rows[:, None].expand(-1, n))
            sizes[name] = n
        x = torch.cat(tokens, dim=1)
        c = self.time_mlp(timestep_embedding(torch.cat(levels, dim=1), self.d_model)) + pooled[:, None]
        mask = None                                  # (B, 1, N, N): which keys each query reads
        if action_rows is not None or video_rows is not None or actions_read_video is not None:
            mask = torch.cat(present, dim=1)[:, None, None, :].expand(-1, 1, x.shape[1], -1)
            if actions_read_video is not None and len(sizes) == 2:
                is_action = torch.arange(x.shape[1], device=x.device) < sizes["action"]   # actions come first
                blocked = is_action[:, None] & ~is_action[None, :]                  # action query, video key
                mask = mask & ~(blocked[None, None] & ~actions_read_video[:, None, None, None])
        for block, kv in zip(self.blocks, prepared["kv"]):
            x = block(x, c, kv, mask=mask)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = modulate(self.final_norm(x), shift, scale)
        result, start = {}, 0
        for name, n in sizes.items():
            head = self.action_out if name == "action" else self.video_out
            result[name] = head(out[:, start:start + n])
            start += n
        return result

    def training_forward(self, x_t, t, prepared, batch, process):
        """Both streams at independent levels; in most rows the actions do not read the frames
        (see the module)."""
        b, device = x_t.shape[0], x_t.device
        v0 = self.video_tokens(batch[future_batch_key(self.future_key)])
        v_t, t_v, v_target = process.training_pair(v0, process.draw_levels((b,), device, v0.dtype))
        has_action = batch["has_action"].bool() if "has_action" in batch else torch.ones(b, dtype=torch.bool,
                                                                                          device=device)
        u = batch_random.rand((b, 2), device)
        action_rows = has_action & (u[:, 0] >= self.action_absent)
        reads = ~action_rows | (u[:, 1] >= self.policy_share)      # absent actions read the frames: outputs unused
        out = self.joint(x_t, t, v_t, t_v, prepared, action_rows, None, reads)
        error = ((out["video"].float() - v_target.float()) ** 2).mean()
        return {"prediction": out["action"], ACTION_ROWS: action_rows, "video_loss": error,
                "policy_rows": action_rows & ~reads}

    def loss_terms(self, out) -> dict[str, torch.Tensor]:
        return {"video": out["video_loss"]} if isinstance(out, dict) and "video_loss" in out else {}

    def log_values(self, out) -> dict[str, float]:
        if not isinstance(out, dict) or ACTION_ROWS not in out:
            return {}
        return {"joint/action_rows": float(out[ACTION_ROWS].float().mean()),
                "joint/policy_rows": float(out["policy_rows"].float().mean())}


@torch.inference_mode()
def predict(policy, batch: dict[str, torch.Tensor], mode: str, steps: int | None = None,
            actions: torch.Tensor | None = None, future: torch.Tensor | None = None,
            generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One inference mode of a joint policy on observation histories (B, n_obs, ...) and goals.

    ``forward`` takes ``actions`` (B, H, A), unnormalised; ``inverse`` takes ``future`` frames
    (B, F, H, W, 3) uint8. Returns ``actions`` (B, H, A) unnormalised for policy / inverse /
    plan, ``frames`` (B, F, H, W, 3) in [0, 1] and their latent ``tokens`` for video / forward /
    plan. ``noise`` (B, H, A): the action stream's starting noise instead of a draw."""
    den = policy.denoiser
    if not isinstance(den, JointDenoiser):
        raise ValueError(f"mode={mode!r} needs a joint video-action policy (policy/denoiser=joint); this one is "
                         f"{policy.spec.denoiser['name']}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    sampled, clean = MODES[mode]
    key = policy.spec.action_key
    prepared = den.prepare(policy.condition(batch))
    b = prepared["pooled"].shape[0]
    given, zero = None, torch.zeros(b, device=policy.device)
    if clean == "action":
        if actions is None:
            raise ValueError("mode='forward' (forward dynamics) needs the actions (B, H, A)")
        given = policy.normalizer.normalize(key, actions.to(policy.device).float())
    elif clean == "video":
        if future is None:
            raise ValueError("mode='inverse' (inverse dynamics) needs the future frames (B, F, H, W, 3)")
        given = den.video_tokens(future.to(policy.device))
    action_shape = (b, policy.spec.horizon, policy.spec.action_dim)
    video_shape = (b, len(den.future_offsets) * den.video_tokens_per_frame, den.video_out.out_features)
    if noise is not None and tuple(noise.shape) != action_shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; the action stream starts from (B, H, A) = "
                         f"{action_shape}")

    def draw(shape):
        return torch.randn(shape, device=policy.device, generator=generator)

    def action_start():
        return noise.to(policy.device, torch.float32) if noise is not None else draw(action_shape)

    n_action = action_shape[1] * action_shape[2]
    if sampled == "action":
        start = action_start()
        def fn(x, t):
            return den.joint(x, t, given, None if given is None else zero, prepared)["action"]
        def split(x):
            return x, None
    elif sampled == "video":
        start = draw(video_shape)
        def fn(x, t):
            return den.joint(given, None if given is None else zero, x, t, prepared)["video"]
        def split(x):
            return None, x
    else:                        # both streams as one flat state (B, H * A + M * P), one level per sample
        start = torch.cat([action_start().flatten(1), draw(video_shape).flatten(1)], dim=1)
        def split(x):
            return x[:, :n_action].reshape(action_shape), x[:, n_action:].reshape(video_shape)
        def fn(x, t):
            acts, video = split(x)
            out = den.joint(acts, t, video, t, prepared)
            return torch.cat([out["action"].flatten(1), out["video"].flatten(1)], dim=1)
    x0, _ = policy.process.sample(fn, start, 1.0, steps or policy.spec.inference_steps)
    sampled_actions, tokens = split(x0)
    result = {}
    if sampled_actions is not None:
        result["actions"] = policy.normalizer.unnormalize(key, sampled_actions)
    if tokens is not None:
        result.update(frames=den.decode_video(tokens), tokens=tokens)
    return result
