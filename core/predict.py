"""Prediction on what a user has: a saved model's ``extra["predictor"]`` names how to read it.

A predictor is ``(model, inputs, out_path=None, **options) -> list of per-sample records``:
``inputs`` is a file path (``jointtrain predict``) or the objects ``JointModel.predict`` was given
that are not a ready batch (a DataFrame, strings, image files, an array). A predictor may write
extra artifacts (e.g. images with boxes drawn) beside ``out_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .registry import Registry

if TYPE_CHECKING:
    from .data import Source
    from .model import JointModel

PREDICTORS: Registry[Callable[..., list[dict[str, Any]]]] = Registry("predictor", builtins=("core.tabular",))
#: ``(model, path) -> sources``: a labelled file the user gives (``jointtrain evaluate MODEL --data FILE``),
#: read with the model's own preprocessing and label names; registered under the predictor's name
LABELLED: Registry[Callable[..., list[Source]]] = Registry("labelled file reader", builtins=("core.tabular",))


def is_batch(inputs: Any) -> bool:
    """A tensor or a mapping of tensors: what the backbone reads as it is (no predictor needed)."""
    if isinstance(inputs, Mapping):
        return bool(inputs) and all(isinstance(v, Tensor) for v in inputs.values())
    return isinstance(inputs, Tensor)


def read_array(inputs: Any) -> tuple[np.ndarray, str]:
    """Rows of numbers and where they came from: a ``.npy`` / ``.csv`` (no header) file or an array-like."""
    if not isinstance(inputs, (str, Path)):
        try:
            return np.asarray(inputs, dtype=np.float32), "inputs"
        except (TypeError, ValueError) as e:
            raise DataError(f"inputs of type {type(inputs).__name__} are not rows of numbers: {e}") from e
    path = Path(inputs)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    try:
        return (np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)), str(path)
    except ValueError as e:
        raise DataError(f"{path}: cannot read numeric rows: {e}") from e


@PREDICTORS.register("tensor")
def predict_tensor(
    model: JointModel, inputs: Any, out_path: Path | None = None, batch_size: int = 256
) -> list[dict[str, Any]]:
    """Rows of numbers (a ``.npy`` / ``.csv`` file without header, or an array), one sample per row."""
    array, source = read_array(inputs)
    expected = model.extra.get("input_shape")
    x = torch.as_tensor(array, dtype=torch.float32)
    if expected is not None and list(x.shape[1:]) != list(expected):
        raise DataError(f"{source}: rows have shape {list(x.shape[1:])}, the model expects {expected}")
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, len(x), batch_size):
        out = model.predict(x[start : start + batch_size].to(device))
        for i in range(len(next(iter(out.values())))):
            records.append({"row": start + i, **{t: preds[i] for t, preds in out.items()}})
    return records
