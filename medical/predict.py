"""``jointtrain predict MODEL records.csv``: one row per patient -> per disease core's binary record
plus the calibrated threshold, ``{"label", "probability", "threshold"}``. The saved backbone's
schema does the preprocessing exactly as in training (core's ``table`` predictor, plus images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import DataError
from core.model import JointModel
from core.predict import PREDICTORS
from core.tabular.predict import as_frame, encode_rows, row_batches, row_records

from .data import image_paths
from .fusion import RecordsBackbone
from .imaging import load_image


@PREDICTORS.register("records")
def predict_records(
    model: JointModel,
    inputs: Any,
    out_path: Path | None = None,
    batch_size: int = 512,
    strict_images: bool = False,
) -> list[dict[str, Any]]:
    """Predictions for every row of a table (a file, a DataFrame or records: ``core.tabular.predict.as_frame``);
    label columns, if present, are ignored. Relative image paths are read beside the file (else the
    working folder)."""
    frame, where = as_frame(inputs)
    folder = Path(inputs).parent if isinstance(inputs, (str, Path)) else Path.cwd()
    if not isinstance(model.backbone, RecordsBackbone):
        name = type(model.backbone).__name__
        raise DataError(f"the 'records' predictor needs a 'records' backbone, this model has {name}")
    modalities = model.backbone.modalities
    encoded = encode_rows(model, frame, where) if "tabular" in modalities else {}
    extra = model.extra
    images = None
    if "image" in modalities:
        paths, _ = image_paths(frame, extra["image_column"], folder, where, strict_images)
        size, channels = extra["image_size"], extra["image_channels"]
        images = [load_image(p, size, channels, strict_images, f"{where} row {row}: ") for row, p in enumerate(paths)]
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for rows in row_batches(len(frame), batch_size):
        batch = {k: v[rows.start : rows.stop].to(device) for k, v in encoded.items()}
        if images is not None:
            blank = torch.zeros(channels, size, size, dtype=torch.uint8)
            batch["image"] = torch.stack([images[r] if images[r] is not None else blank for r in rows]).to(device)
            batch["image_present"] = torch.tensor([images[r] is not None for r in rows], device=device)
        predicted = row_records(model, frame, rows, model.predict(batch))
        if images is not None:
            used = [images[r] is not None for r in rows]
            predicted = [{**record, "image_used": u} for record, u in zip(predicted, used, strict=True)]
        records += predicted
    return records
