"""A registry of architectures behind one ``create_net(name, ...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import InputError

_NETS: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor available as ``create_net(name, ...)``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _NETS:
            raise InputError(f"a net named {name!r} is already registered")
        _NETS[name] = fn
        return fn

    return wrap


def list_nets() -> list[str]:
    return sorted(_NETS)


def net_options(name: str) -> list[str]:
    """Constructor argument names of a registered net."""
    if name not in _NETS:
        raise InputError(f"unknown net {name!r}; available: {', '.join(list_nets())}")
    return list(inspect.signature(_NETS[name]).parameters)


def create_net(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered net; unknown names or arguments give an error listing valid ones."""
    if name not in _NETS:
        raise InputError(f"unknown net {name!r}; available: {', '.join(list_nets())}")
    fn = _NETS[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise InputError(f"net {name!r} has no option {', '.join(bad)}; options: {', '.join(params)}")
    return fn(**kwargs)
