"""The one walker over nested containers (tensors in dicts, lists and tuples)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested dict / list / tuple; other leaves stay as they are."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def tree_leaves(tree: Any) -> list[Tensor]:
    """The tensors of a nested container, in traversal order."""
    leaves: list[Tensor] = []
    tree_map(leaves.append, tree)
    return leaves


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (log records to TensorBoard scalar names)."""
    flat: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
