"""The ``ditpolicy`` command: one verb per job, hydra overrides for every setting.

    ditpolicy <verb> [key=value ...]     run a verb
    ditpolicy <verb> --help              show the verb's configuration
    ditpolicy --help                     list the verbs
"""

from __future__ import annotations

import importlib
import sys

from omegaconf import OmegaConf

from .config import compose
from .settings import SettingError

# verb -> (one-line help, "module:function" taking the composed config)
VERBS: dict[str, tuple[str, str]] = {
    "collect": ("collect expert demonstrations into a zarr store", "ditpolicy.commands:collect"),
    "info": ("summarise a zarr demonstration store", "ditpolicy.commands:info"),
    "verify": ("check every chunk, checksum and value of a store; exit 1 on any problem", "ditpolicy.commands:verify"),
    "train": ("train a policy on a zarr store", "ditpolicy.commands:train"),
    "distill": ("consistency-distil a checkpoint into a 1-2 step sampler (second training stage)",
                "ditpolicy.commands:distill"),
    "eval": ("evaluate a checkpoint in simulation (success, latency, videos, plot)", "ditpolicy.commands:eval"),
    "deploy": ("run a checkpoint as a ROS 2 node (robot=ros) or on an in-process simulated arm (robot=metaworld)",
               "ditpolicy.commands:deploy"),
    "sim-robot": ("a simulated Meta-World arm on ROS 2 topics (optionally driven by the scripted expert)",
                  "ditpolicy.ros_commands:sim_robot"),
    "record": ("record demonstrations from ROS 2 topics into a zarr store", "ditpolicy.ros_commands:record"),
    "convert": ("other formats into a zarr store: convert rosbag|libero|robomimic|calvin|lerobot <src> <store>",
                "ditpolicy.convert_command:convert"),
    "export": ("write a checkpoint's policy as ONNX graphs (optionally int8) for ONNX Runtime",
               "ditpolicy.commands:export"),
    "demo": ("the main job on its defaults, end to end", "ditpolicy.commands:demo"),
}


def usage() -> str:
    lines = [
        "usage: ditpolicy <verb> [key=value ...]   (hydra overrides; '<verb> --help' shows the config)",
        "",
        "verbs:",
    ]
    lines += [f"  {verb:<10} {text}" for verb, (text, _) in VERBS.items()]
    return "\n".join(lines)


def _positional_to_overrides(verb: str, args: list[str]) -> list[str]:
    """``info path`` and ``verify path`` are sugar for ``store=path``; ``convert rosbag <bag> <store>``
    for ``format=rosbag input=<bag> out=<store>``."""
    if verb in ("info", "verify") and args and "=" not in args[0] and not args[0].startswith("-"):
        return [f"store={args[0]}"] + args[1:]
    if verb == "convert":
        positional = []
        while args and len(positional) < 3 and "=" not in args[0] and not args[0].startswith("-"):
            positional.append(args.pop(0))
        return [f"{k}={v}" for k, v in zip(("format", "input", "out"), positional)] + args
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"ditpolicy: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    args = _positional_to_overrides(verb, args)
    show = any(a in ("-h", "--help", "--cfg") for a in args)
    args = [a for a in args if a not in ("-h", "--help", "--cfg")]
    try:
        cfg = compose(verb, args)
    except Exception as exc:  # hydra's override and missing-config errors
        print(f"ditpolicy {verb}: bad configuration: {exc}", file=sys.stderr)
        return 2
    if show:
        print(f"ditpolicy {verb}: {VERBS[verb][0]}\n\nconfiguration (override with key=value):\n")
        print(OmegaConf.to_yaml(cfg))
        return 0
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        needed = " ".join(f"{key}=..." for key in missing)
        print(f"ditpolicy {verb}: missing required setting(s) {', '.join(missing)}; pass {needed}", file=sys.stderr)
        return 2
    module_name, func_name = VERBS[verb][1].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        result = func(cfg)
    except SettingError as exc:
        print(f"ditpolicy {verb}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"ditpolicy {verb}: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)
