"""The policy spec: everything needed to rebuild a policy, saved in each checkpoint.

Its fields come from the ``policy`` config group (configs/policy/, where every default
lives) plus what the data says: observation shapes, action size, task names. Nothing here
has a default of its own, so a spec is always exactly what was configured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class PolicySpec:
    # from the data
    obs_keys: list[str]                  # observation keys, in token order
    obs_shapes: dict[str, list[int]]     # per-step shape per observation key
    image_keys: list[str]                # the obs keys that are uint8 (H, W, 3) camera frames
    action_key: str
    action_dim: int
    tasks: list[str]                     # task names; the task goal token indexes this list
    goal_shapes: dict[str, list[int]]    # per-sample input shape of goal kinds that need one (language: [L])
    normalize: dict[str, str]            # key -> normaliser mode
    # from the policy config
    d_model: int                         # width of every token
    n_obs: int                           # observation history length
    horizon: int                         # actions per chunk (H)
    n_action_steps: int                  # actions executed per chunk
    goals: list[str]                     # goal token kinds (goals.py)
    inference_steps: int                 # default sampler steps; every call may choose its own
    image_widths: list[int]              # per-camera CNN stage widths
    image_encoder: dict                  # camera tokens and augmentation (encoders.ImageTokens fields)
    loss_weights: dict[str, float]       # weight per named loss term
    prefix_delay_max: int                # training-time real-time chunking: up to this many leading actions given clean (0: off)
    denoiser: dict                       # the denoiser family's section: name (+ module) and options
    process: dict                        # the denoising process's section: name and options

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, policy_cfg: dict, obs_shapes: dict[str, list[int]], image_keys: list[str],
                    action_dim: int, tasks: list[str], action_key: str = "action",
                    goal_shapes: dict[str, list[int]] | None = None) -> "PolicySpec":
        """A spec from the ``policy`` config section plus the data's shapes and tasks."""
        p = dict(policy_cfg)
        lowdim_mode, action_mode = p.pop("lowdim_normalization"), p.pop("action_normalization")
        normalize = {k: lowdim_mode for k in obs_shapes if k not in image_keys}
        normalize[action_key] = action_mode
        return cls.from_dict(dict(
            obs_keys=list(obs_shapes), obs_shapes={k: list(v) for k, v in obs_shapes.items()},
            image_keys=list(image_keys), action_key=action_key, action_dim=int(action_dim), tasks=list(tasks),
            goal_shapes=dict(goal_shapes or {}), normalize=normalize, **p))

    @classmethod
    def from_dict(cls, data: dict) -> "PolicySpec":
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            parts = ([f"unknown field(s) {unknown}"] if unknown else []) + \
                    ([f"missing field(s) {missing}"] if missing else [])
            raise ValueError(f"policy spec: {'; '.join(parts)}")
        spec = cls(**data)
        spec.check()
        return spec

    def check(self) -> None:
        """Counts and sizes, each named by its config key."""
        for key in ("d_model", "n_obs", "horizon", "n_action_steps", "inference_steps", "action_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"policy.{key} must be a positive integer, got {value!r}")
        if not isinstance(self.prefix_delay_max, int) or isinstance(self.prefix_delay_max, bool) \
                or not 0 <= self.prefix_delay_max < self.horizon:
            raise ValueError(f"policy.prefix_delay_max must be an integer in [0, horizon={self.horizon}), "
                             f"got {self.prefix_delay_max!r}")
        from .encoders import ImageTokens

        ImageTokens(**self.image_encoder)           # names the bad key
        if self.n_action_steps > self.horizon:
            raise ValueError(f"policy.n_action_steps={self.n_action_steps} exceeds policy.horizon={self.horizon}")
        for name, weight in self.loss_weights.items():
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"policy.loss_weights.{name} must be a number >= 0, got {weight!r}")
