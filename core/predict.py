"""Prediction on what a user has: a saved model's ``extra["predictor"]`` names how to read it.

A predictor is ``(model, inputs, out_path=None, **options) -> list of per-sample records``:
``inputs`` is a file path (``jointtrain predict``) or the objects ``JointModel.predict`` was given
that are not a ready batch (a DataFrame, strings, image files, an array). A predictor may write
extra artifacts (e.g. images with boxes drawn) beside ``out_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .registry import Registry

if TYPE_CHECKING:
    from .data import Source

PREDICTORS: Registry[Callable[..., list[dict[str, Any]]]] = Registry(
    "predictor", builtins=("core.array_predict", "core.tabular")
)
#: ``(model, path) -> sources``: a labelled file the user gives (``jointtrain evaluate MODEL --data FILE``),
#: read with the model's own preprocessing and label names; registered under the predictor's name
LABELLED: Registry[Callable[..., list[Source]]] = Registry("labelled file reader", builtins=("core.tabular",))


def is_batch(inputs: Any) -> bool:
    """A tensor or a mapping of tensors: what the backbone reads as it is (no predictor needed)."""
    if isinstance(inputs, Mapping):
        return bool(inputs) and all(isinstance(v, Tensor) for v in inputs.values())
    return isinstance(inputs, Tensor)
