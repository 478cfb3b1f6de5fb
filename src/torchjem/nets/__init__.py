"""Architectures, each registered by name: ``create_net("wrn", depth=28, width=10)``."""

from . import conv1d, small, wrn  # noqa: F401  (registers the nets)
from .registry import create_net, list_nets, net_options, register_net

__all__ = ["create_net", "list_nets", "net_options", "register_net"]
