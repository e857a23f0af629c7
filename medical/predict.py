"""``jointtrain predict MODEL records.csv``: one row per patient -> a calibrated probability and a
decision per disease. The saved backbone's schema does the preprocessing exactly as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import DataError
from core.model import JointModel
from core.predict import PREDICTORS

from .data import image_paths, read_table
from .imaging import load_image
from .tabular import warn_unknown


@PREDICTORS.register("records")
def predict_records(
    model: JointModel,
    path: str | Path,
    out_path: Path | None = None,
    batch_size: int = 512,
    strict_images: bool = False,
) -> list[dict[str, Any]]:
    """Predictions for every row of a CSV; label columns, if present, are ignored."""
    path = Path(path)
    frame = read_table(path)
    backbone = model.backbone
    modalities = getattr(backbone, "modalities", None)
    if modalities is None:
        raise DataError(f"the 'records' predictor needs a 'records' backbone, this model has {type(backbone).__name__}")
    schema = backbone.schema if "tabular" in modalities else None
    n = len(frame)
    inputs: dict[str, torch.Tensor] = {}
    if schema is not None:
        inputs["numeric"], inputs["categorical"], unknown = schema.encode(frame, str(path))
        warn_unknown(unknown, str(path))
    extra = model.extra
    images = None
    if "image" in modalities:
        paths, _ = image_paths(frame, extra["image_column"], path.parent, str(path), strict_images)
        size, channels = extra["image_size"], extra["image_channels"]
        images = [load_image(p, size, channels, strict_images, f"{path} row {row}: ") for row, p in enumerate(paths)]
    id_column = extra.get("id_column")
    ids = frame[id_column].tolist() if id_column and id_column in frame.columns else None
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, n, batch_size):
        rows = range(start, min(start + batch_size, n))
        batch = {k: v[start : rows.stop].to(device) for k, v in inputs.items()}
        if images is not None:
            blank = torch.zeros(channels, size, size, dtype=torch.uint8)
            batch["image"] = torch.stack([images[r] if images[r] is not None else blank for r in rows]).to(device)
            batch["image_present"] = torch.tensor([images[r] is not None for r in rows], device=device)
        out = model.predict(batch)
        for i, row in enumerate(rows):
            record: dict[str, Any] = {"row": row}
            if ids is not None:
                record["id"] = ids[row]
            if images is not None:
                record["image_used"] = images[row] is not None
            records.append({**record, **{t: preds[i] for t, preds in out.items()}})
    return records
