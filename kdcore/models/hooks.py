"""Stage outputs read by forward hooks on named modules (torchdistill's idea): no model is rewritten."""
from __future__ import annotations

import difflib
import functools
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError


def _unknown_module(model: nn.Module, name: str) -> ConfigError:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    if len(names) <= 40:
        listing = f"Available module names: {', '.join(names)}."
    else:
        top = [n for n in names if "." not in n]
        listing = (f"Top-level modules: {', '.join(top)} ({len(names)} modules in all; print them with "
                   f"[n for n, _ in model.named_modules()]).")
    spec = getattr(model, "kd_spec", None)
    blocks = f" Its feature blocks are {', '.join(spec.feature_blocks)}." if spec else ""
    return ConfigError(f"{type(model).__name__} has no module {name!r}.{hint} {listing}{blocks}")


class FeatureHooks:
    """Capture the outputs of named submodules with forward hooks; the model itself is never changed.

        with FeatureHooks(model, ["layer2", "layer3"]) as hooks:
            logits = model(x)
        hooks.features["layer2"]

    Or call attach() / remove() to keep the hooks across many forward passes. Each forward overwrites
    `features`; a module returning a tuple or list contributes its first tensor.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.model = model
        self.names = tuple(names)
        modules = dict(model.named_modules())
        for name in self.names:
            if not name or name not in modules:
                raise _unknown_module(model, name)
        self._modules = [modules[n] for n in self.names]
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._entered: list[bool] = []  # per `with`: did it attach (so its exit must remove)?

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> FeatureHooks:
        """Register the hooks (a no-op when already attached) and forget features from earlier passes."""
        if not self._handles:
            self.features.clear()
            self._handles = [m.register_forward_hook(functools.partial(self._store, n))
                             for n, m in zip(self.names, self._modules)]
        return self

    def remove(self) -> None:
        """Unregister the hooks; `features` keeps the last captured values."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _store(self, name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, torch.Tensor)), output)
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"Module {name!r} returned {type(output).__name__}, not a tensor; hook a module "
                              f"that outputs a feature map.")
        self.features[name] = output

    def __enter__(self) -> FeatureHooks:
        self._entered.append(not self.attached)
        return self.attach()

    def __exit__(self, *exc) -> None:
        if self._entered.pop():
            self.remove()
