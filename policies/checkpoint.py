"""Checkpoints: a directory of plain files, never pickles.

    config.yaml               the training config, with the policy spec under ``policy_spec``
    model.safetensors         raw weights
    ema.safetensors           EMA weights (what ``from_checkpoint`` loads by default)
    normalizer.safetensors    per-key scale and offset
    meta.json                 versions, policy type, denoiser family, step, data fingerprint
    train_state.safetensors   optimiser moments and torch RNG state   (for resume)
    train_state.json          step, optimiser groups, scheduler, numpy RNG, EMA count

Training writes ``<run>/checkpoints/step_NNNNNNN`` into a temporary directory, renames it into
place, then swaps the ``latest`` symlink with an atomic replace; temporary directories left
by a run killed while saving are removed by the next save. Loading checks every file it
reads and names it in every error; ``DiffusionPolicy.from_checkpoint`` is the entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from ..datasets import Normalizer
from .denoiser import DENOISERS
from .legacy import LEGACY_POLICY_TYPE, POOLED_IMAGE_ENCODER, is_legacy_spec, upgrade_spec, upgrade_state
from .policy import DiffusionPolicy
from .spec import PolicySpec

POLICY_TYPE = "diffusion"

REQUIRED_FILES = ("config.yaml", "model.safetensors", "ema.safetensors", "normalizer.safetensors", "meta.json")
LATEST = "latest"


class CheckpointError(ValueError):
    def __init__(self, path, message: str):
        super().__init__(f"checkpoint {path}: {message}")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entries in opt_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in info["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: str | Path,
    policy: DiffusionPolicy,
    ema_state: dict[str, torch.Tensor],
    cfg: DictConfig | dict,
    meta: dict,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory + rename).

    train_state (optional): {"optimizer": state_dict, "scheduler": state_dict, "step": int,
    "numpy_rng": dict, "torch_rng": ByteTensor, "ema_updates": int}."""
    path = Path(path)
    model_state = _contiguous(policy.state_dict())
    for name, state in (("model.safetensors", model_state), ("ema.safetensors", ema_state)):
        try:  # a non-finite checkpoint is never written
            check_state(state, state, name)
        except ValueError as exc:
            raise CheckpointError(path, f"not written: {exc}") from None
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".*.tmp-*"):  # left by a run killed while saving
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    tmp.mkdir()
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)
    cfg.policy_spec = policy.spec.to_dict()
    OmegaConf.save(cfg, tmp / "config.yaml")
    save_file(model_state, str(tmp / "model.safetensors"))
    save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
    policy.normalizer.save(tmp / "normalizer.safetensors")
    from .. import __version__

    meta = {"policy_type": POLICY_TYPE, "denoiser": policy.spec.denoiser["name"], "ditpolicy_version": __version__,
            "torch_version": torch.__version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if train_state is not None:
        tensors, optim_info = _flatten_optimizer(train_state["optimizer"])
        tensors["rng/torch"] = train_state["torch_rng"]
        save_file(tensors, str(tmp / "train_state.safetensors"))
        info = {k: v for k, v in train_state.items() if k not in ("optimizer", "torch_rng")}
        info["optimizer"] = optim_info
        (tmp / "train_state.json").write_text(json.dumps(info))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def point_latest(checkpoints_dir: Path, target: Path, keep_last: int = 2) -> None:
    """Atomically point ``checkpoints_dir/latest`` at ``target`` and prune older step dirs."""
    link_tmp = checkpoints_dir / f".{LATEST}.tmp-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(target.name, link_tmp)
    os.replace(link_tmp, checkpoints_dir / LATEST)
    steps = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old.resolve() != target.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _check_dir(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise CheckpointError(path, f"is a link to {os.readlink(path)}, which does not exist (dangling link)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(path, "is a file; a checkpoint is a directory")
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(missing)} (a checkpoint holds {', '.join(REQUIRED_FILES)})")


def _read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads((path / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{name} holds a {type(data).__name__}, not an object")
    return data


def read_spec(path: Path) -> tuple[DictConfig, PolicySpec, dict]:
    """(training config, policy spec, meta) of a checkpoint directory, each file checked."""
    try:
        cfg = OmegaConf.load(path / "config.yaml")
    except Exception as exc:  # yaml and omegaconf raise several types
        raise CheckpointError(path, f"config.yaml is not valid YAML: {exc}") from exc
    meta = _read_json(path, "meta.json")
    policy_type = meta.get("policy_type")
    if policy_type not in (POLICY_TYPE, LEGACY_POLICY_TYPE):
        raise CheckpointError(path, f"meta.json describes a {policy_type!r} policy, not a {POLICY_TYPE!r} policy")
    if not isinstance(cfg, DictConfig) or "policy_spec" not in cfg:
        raise CheckpointError(path, "config.yaml has no 'policy_spec' section (not a ditpolicy checkpoint)")
    spec_dict = OmegaConf.to_container(cfg.policy_spec, resolve=True)
    if is_legacy_spec(spec_dict):
        spec_dict = upgrade_spec(spec_dict)
    elif "type" not in spec_dict:
        spec_dict.setdefault("prefix_delay_max", 0)      # checkpoints from before real-time chunking
        spec_dict.setdefault("image_encoder", dict(POOLED_IMAGE_ENCODER))   # ... and before spatial tokens
    if "type" in spec_dict:
        raise CheckpointError(path, f"config.yaml describes a {spec_dict['type']!r} policy, not a {POLICY_TYPE!r} policy")
    try:
        spec = PolicySpec.from_dict(spec_dict)
        DENOISERS.get(spec.denoiser.get("name"), spec.denoiser.get("module"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"config.yaml policy_spec: {exc}") from exc
    return cfg, spec, meta


def _read_weights(path: Path, filename: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path / filename))
    except Exception as exc:  # safetensors raises its own error types for bad headers and sizes
        raise CheckpointError(path, f"{filename} is not a readable safetensors file "
                                    f"({type(exc).__name__}: {exc})") from exc


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Names, shapes and finiteness of ``state`` against a model's own state dict."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where} does not match the config: missing tensors {missing[:5]}, "
                         f"unexpected tensors {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"{where} tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"the config builds {tuple(own[name].shape)}")
        if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
            raise ValueError(f"{where} tensor {name!r} holds NaN/inf")


def _load_weights(policy: DiffusionPolicy, path: Path, filename: str, legacy: bool) -> None:
    state = _read_weights(path, filename)
    if legacy:
        state = upgrade_state(state, policy.spec.goals)
    try:
        check_state(policy.state_dict(), state, filename)
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None
    policy.load_state_dict(state)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory's ``checkpoints/latest``."""
    path = Path(path)
    latest = path / "checkpoints" / LATEST
    if latest.is_symlink() and not latest.exists():
        raise CheckpointError(latest, f"is a link to {os.readlink(latest)}, which does not exist (dangling link)")
    return latest if latest.exists() else path


def load_policy(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                inference_mode: str = "eager") -> DiffusionPolicy:
    """Rebuild the policy of a checkpoint directory (``DiffusionPolicy.from_checkpoint``)."""
    path = resolve_checkpoint(path)
    _check_dir(path)
    _, spec, meta = read_spec(path)
    try:
        normalizer = Normalizer.load(path / "normalizer.safetensors")
    except Exception as exc:
        raise CheckpointError(path, f"normalizer.safetensors unreadable: {exc}") from exc
    try:
        policy = DiffusionPolicy(spec, normalizer)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"config.yaml policy_spec: {exc}") from exc
    legacy = meta.get("policy_type") == LEGACY_POLICY_TYPE
    _load_weights(policy, path, "ema.safetensors" if use_ema else "model.safetensors", legacy)
    return policy.to(device).eval().set_inference_mode(inference_mode)


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """(model state, train info incl. optimizer state dict and torch RNG, EMA state)."""
    _check_dir(path)
    for name in ("train_state.safetensors", "train_state.json"):
        if not (path / name).exists():
            raise CheckpointError(path, f"missing {name}: this checkpoint cannot be resumed (it holds weights only)")
    tensors = _read_weights(path, "train_state.safetensors")
    info = _read_json(path, "train_state.json")
    info["optimizer"] = _unflatten_optimizer(tensors, info["optimizer"])
    info["torch_rng"] = tensors["rng/torch"]
    return _read_weights(path, "model.safetensors"), info, _read_weights(path, "ema.safetensors")
