"""The architecture registry: ``{"name": ..., **kwargs}`` -> :class:`~core.architectures.base.Architecture`."""

from __future__ import annotations

from ..registry import Registry
from .base import Architecture

ARCHITECTURES: Registry[Architecture] = Registry("architecture")
