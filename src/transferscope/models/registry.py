"""One registry and one factory for architectures (in the manner of timm's ``create_model``).

A builder takes ``num_classes``, ``image_shape`` (C, H, W) and its own keyword options, and returns
a :class:`CutNet`. :func:`create_model` seeds the initialiser, so the same ``init_seed`` gives the
same weights on any machine. A family (:func:`register_family`) answers every name under a prefix,
such as ``timm/<name>``, with one builder per name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from transferscope.errors import UserError
from transferscope.models.cutnet import CutNet

class LazyModule:
    """A module imported on its first attribute access: torchvision's models and timm cost seconds
    to import, which every command paid, whether or not it builds one of their networks."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


Builder = Callable[..., CutNet]
_MODELS: dict[str, tuple[Builder, str]] = {}
#: prefix -> (the builder for the name after the prefix, description)
_FAMILIES: dict[str, tuple[Callable[[str], Builder], str]] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = (fn, description)
        return fn

    return deco


def register_family(prefix: str, builder_for: Callable[[str], Builder], description: str) -> None:
    """Every name ``prefix + <name>`` is built by ``builder_for(<name>)`` (which raises UserError for
    a name it does not know)."""
    if prefix in _FAMILIES:
        raise ValueError(f"model family {prefix!r} registered twice")
    _FAMILIES[prefix] = (builder_for, description)


def list_models(families: bool = False) -> dict[str, str]:
    """Name -> description of each registered architecture; with ``families``, each family too, as
    one entry ``prefix<name>`` (not a name that builds)."""
    out = {k: d for k, (_, d) in sorted(_MODELS.items())}
    if families:
        out.update({f"{p}<name>": d for p, (_, d) in sorted(_FAMILIES.items())})
    return out


def model_options(name: str) -> dict[str, Any]:
    """The builder's keyword options with their defaults."""
    builder = _builder(name)
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _builder(name: str) -> Builder:
    if name in _MODELS:
        return _MODELS[name][0]
    for prefix, (builder_for, _) in _FAMILIES.items():
        if name.startswith(prefix):
            return builder_for(name[len(prefix):])
    available = [*sorted(_MODELS), *(f"{p}<name>" for p in sorted(_FAMILIES))]
    raise UserError(f"model.arch: unknown architecture {name!r}; available: {', '.join(available)}")


def create_model(name: str, num_classes: int, image_shape: tuple[int, int, int],
                 options: dict[str, Any] | None = None, init_seed: int = 0) -> CutNet:
    """Build a registered architecture with weights drawn from ``init_seed``."""
    builder = _builder(name)
    options = dict(options or {})
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"model.options.{unknown[0]}: unknown option for {name!r}; allowed: {', '.join(allowed) or 'none'}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            return builder(num_classes, image_shape, **options)
        except (TypeError, ValueError) as e:
            raise UserError(f"model.options: {name!r} cannot be built with {options}: {e}") from None
