"""Prediction on files: a saved model's ``extra["predictor"]`` names how to read its inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .model import JointModel
from .registry import Registry

#: ``(model, input_path, out_path) -> list of per-sample records``; a predictor may write
#: extra artifacts (e.g. images with boxes drawn) beside ``out_path``.
PREDICTORS: Registry[Callable[..., list[dict[str, Any]]]] = Registry("predictor", builtins=("core.tabular",))


@PREDICTORS.register("tensor")
def predict_tensor(
    model: JointModel, path: str | Path, out_path: Path | None = None, batch_size: int = 256
) -> list[dict[str, Any]]:
    """Rows of numbers from ``.npy`` or ``.csv`` (no header), one sample per row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    try:
        array = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: cannot read numeric rows: {e}") from e
    expected = model.extra.get("input_shape")
    x = torch.as_tensor(array, dtype=torch.float32)
    if expected is not None and list(x.shape[1:]) != list(expected):
        raise DataError(f"{path}: rows have shape {list(x.shape[1:])}, the model expects {expected}")
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, len(x), batch_size):
        out = model.predict(x[start : start + batch_size].to(device))
        for i in range(len(next(iter(out.values())))):
            records.append({"row": start + i, **{t: preds[i] for t, preds in out.items()}})
    return records
