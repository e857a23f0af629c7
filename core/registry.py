"""String -> factory registries. Every component is built from ``{"name": ..., **kwargs}``.

A name containing ``:`` is an import path (``mypkg.module:MyBackbone``), so users plug in their
own components without editing the library. Import paths run code, so they are refused while
loading files a user did not write (:func:`untrusted`), unless the caller opts in
(``trust_remote_code=True``, the transformers convention).

Domain packages announce themselves through the ``jointtrain.plugins`` entry-point group; they
are imported only when a name is not found among the components already registered, so
``jointtrain --help`` or a core-only run never pays for timm or transformers.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

#: every registry by kind, for ``jointtrain list``
REGISTRIES: dict[str, Registry[Any]] = {}

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("jointtrain_trust_imports", default=True)
_plugins_loaded = False


@contextlib.contextmanager
def untrusted(source: str) -> Iterator[None]:
    """Inside this block import paths are refused: components resolve by registered name only."""
    token = _TRUSTED.set(False)
    try:
        yield
    except UntrustedImport as e:
        raise ConfigError(
            f"{source} names the import path '{e.path}', which would run code from that file. Load it with "
            "trust_remote_code=True (CLI: --trust-remote-code) only if you trust its author."
        ) from None
    finally:
        _TRUSTED.reset(token)


class UntrustedImport(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def load_plugins() -> None:
    """Import every installed domain package (each registers its components) once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="jointtrain.plugins"):
        try:
            ep.load()
        except ImportError as e:  # a domain installed without its extra
            warnings.warn(f"jointtrain plugin '{ep.name}' not loaded: {e}; install jointtrain[{ep.name}]", stacklevel=2)


def suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def import_object(path: str) -> Any:
    """Resolve ``package.module:attr`` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not _TRUSTED.get():
        raise UntrustedImport(path)
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

    def __init__(self, kind: str, builtins: Sequence[str] = ()) -> None:
        if kind in REGISTRIES:
            raise ValueError(f"a registry of kind '{kind}' already exists")
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._builtins = tuple(builtins)  # modules registering core's own components, imported on first lookup
        REGISTRIES[kind] = self

    def _load(self, plugins: bool) -> None:
        for module in self._builtins:
            importlib.import_module(module)
        if plugins:
            load_plugins()

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
        self._load(plugins=True)
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> Callable[..., T]:
        if ":" in name:
            return import_object(name)
        for plugins in (False, True):
            if name in self._factories:
                return self._factories[name]
            self._load(plugins)
        if name in self._factories:
            return self._factories[name]
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
