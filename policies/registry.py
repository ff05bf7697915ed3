"""Name -> class tables for the pluggable parts of a policy (denoiser families, processes).

A part is chosen by a config section such as ``{name: dit, n_layers: 4}``. The section may
also name the module that defines it (``module: my_lab.families.tiny``), which is imported
before the look-up, so a family outside this package needs no change here: its module
registers it with the decorator and its yaml names the module. The section's other keys
are the constructor's keyword arguments, checked against its signature so that a typo names
the option instead of failing deep inside a constructor.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

# keys of a config section that select or weight a part instead of configuring it
SELECTOR_KEYS = ("name", "module", "loss_weights")


class Registry(Generic[T]):
    """Classes of one kind (``what``: "denoiser", "process") by name."""

    def __init__(self, what: str, config_key: str):
        self.what = what
        self.config_key = config_key   # where users set it, for error messages
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is registered twice "
                                 f"({self._classes[name].__module__} and {cls.__module__})")
            self._classes[name] = cls
            cls.registry_name = name
            return cls
        return add

    @property
    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str, module: str | None = None) -> type:
        if module:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"{self.config_key}.module: cannot import {module!r} for {self.what} "
                                 f"{name!r}: {exc}") from exc
        if name not in self._classes:
            hint = "" if module else f" (a {self.what} outside ditpolicy sets {self.config_key}.module)"
            raise ValueError(f"unknown {self.what} {name!r} in {self.config_key}.name; "
                             f"known: {', '.join(self.names)}{hint}")
        return self._classes[name]

    def build(self, section: dict, **fixed):
        """An instance from a config section; ``fixed`` are arguments the policy supplies
        (e.g. action_dim, horizon, d_model) that the section must not set."""
        section = dict(section)
        if "name" not in section:
            raise ValueError(f"{self.config_key} has no 'name' (known: {', '.join(self.names)})")
        cls = self.get(section["name"], section.get("module"))
        options = {k: v for k, v in section.items() if k not in SELECTOR_KEYS}
        clash = sorted(set(options) & set(fixed))
        if clash:
            raise ValueError(f"{self.config_key}: {clash} are set by the policy, not by the {self.what} config")
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        known = [p for p in params if p not in ("self", *fixed)]
        unknown = sorted(set(options) - set(known))
        if unknown and not takes_any:
            raise ValueError(f"{self.config_key}: unknown option(s) {unknown} for the {section['name']!r} "
                             f"{self.what} (options: {', '.join(known) or 'none'})")
        try:
            return cls(**fixed, **options)
        except TypeError as exc:
            raise ValueError(f"{self.config_key}: {exc}") from exc
