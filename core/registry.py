"""String -> factory registries. Every component is built from ``{"name": ..., **kwargs}``.

A name containing ``:`` is an import path (``mypkg.module:MyBackbone``), so users plug in their
own components without editing the library.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

#: every registry by kind, for ``jointtrain list``
REGISTRIES: dict[str, Registry[Any]] = {}


def suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def import_object(path: str) -> Any:
    """Resolve ``package.module:attr`` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"import path '{path}' must look like 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import module '{module_name}' for '{path}': {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    return obj


def split_spec(spec: str | Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{"name": ..., **kwargs}`` -> (name, kwargs)."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"a {kind} spec must be a name or a mapping with a 'name' key, got {spec!r}")
    kwargs = dict(spec)
    return str(kwargs.pop("name")), kwargs


def check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Fail on unknown keyword arguments with the list of valid ones (catches config typos)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(
                f"{what} got an unknown argument '{key}'.{suggest(key, valid)} "
                f"Valid arguments: {', '.join(valid) or '(none)'}"
            )


class Registry(Generic[T]):
    """A named collection of factories that refuses silent overwrites."""

    def __init__(self, kind: str) -> None:
        if kind in REGISTRIES:
            raise ValueError(f"a registry of kind '{kind}' already exists")
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        REGISTRIES[kind] = self

    def register(self, name: str, *, override: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if name != name.lower() or ":" in name:
            raise ValueError(f"{self.kind} names are lowercase and contain no ':', got '{name}'")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and not override and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} '{name}' is already registered; pass override=True to replace it")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        if name in self._factories:
            return self._factories[name]
        if ":" in name:
            return import_object(name)
        valid = self.names()
        raise ConfigError(
            f"unknown {self.kind} '{name}'.{suggest(name, valid)} Valid names: {', '.join(valid)}; "
            "or give an import path 'package.module:Name'."
        )

    def build(self, spec: str | Mapping[str, Any], **extra: Any) -> T:
        """Build from a spec; ``extra`` are arguments supplied by the library (not the user)."""
        name, kwargs = split_spec(spec, self.kind)
        factory = self.get(name)
        # None-valued kwargs are pruned so the component's own defaults stand.
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        check_kwargs(factory, {**kwargs, **extra}, f"{self.kind} '{name}'")
        return factory(**extra, **kwargs)
