"""Small generated patient tables (and images) for the medical tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def records_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two diseases driven by different features, missing lab values, categories, unknown labels.

    ``renal`` depends on the lab value ``creatinine`` (often missing), ``cardiac`` on ``smoker``
    and ``age``; about 20 % of each label is unknown (empty).
    """
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    creatinine = rng.lognormal(0, 0.5, n)
    smoker = rng.choice(["yes", "no", "former"], n)
    site = rng.choice(["north", "south"], n)
    renal = (np.log(creatinine) + 0.3 * rng.normal(size=n) > 0.4).astype(float)
    cardiac = ((smoker == "yes") & (age > 50) | (rng.random(n) < 0.03)).astype(float)
    creatinine[rng.random(n) < 0.2] = np.nan  # missing lab value: renal risk then unknown to the model
    renal[rng.random(n) < 0.2] = np.nan
    cardiac[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "patient": [f"p{i:04d}" for i in range(n)],
            "age": age.round(1),
            "creatinine": creatinine.round(3),
            "smoker": smoker,
            "site": site,
            "renal": pd.array(renal, dtype="Float64"),
            "cardiac": pd.array(cardiac, dtype="Float64"),
        }
    )


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def image_records(directory: Path, n: int = 240, size: int = 16, seed: int = 0, missing: float = 0.15) -> Path:
    """``lesion`` is visible only in the image (a bright square), ``metabolic`` only in the table.

    A fraction ``missing`` of patients has no image on file (empty path).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lesion = rng.random(n) < 0.4
    marker = rng.normal(size=n)
    metabolic = marker + 0.2 * rng.normal(size=n) > 0.3
    paths = []
    for i in range(n):
        if rng.random() < missing:
            paths.append("")
            continue
        pixels = rng.normal(60, 20, (size, size))
        if lesion[i]:
            r, c = rng.integers(1, size - 7, 2)
            pixels[r : r + 6, c : c + 6] = 230
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(directory / f"img{i}.png")
        paths.append(f"img{i}.png")
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "marker": marker.round(3),
            "noise": rng.normal(size=n).round(3),
            "image": paths,
            "lesion": lesion.astype(int),
            "metabolic": metabolic.astype(int),
        }
    )
    return write_csv(frame, directory / "records.csv")
