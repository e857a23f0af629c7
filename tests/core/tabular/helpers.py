"""The table of issue 11: 10 numeric features, one categorical, a 3-class, a binary and a
regression label, about 30 % of each label empty; generated, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd

LABELS = {"species": "classification", "flag": "binary", "target": "regression"}


def issue_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """``species`` (alpha / beta / gamma) depends on x0, x1 and ``color``; ``flag`` on x2 + x3;
    ``target`` = 3 x4 - 2 x5 + 10 (+ noise); x6 and x7 have missing values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    frame = pd.DataFrame({f"x{i}": x[:, i].round(4) for i in range(10)})
    frame["color"] = rng.choice(["red", "green", "blue"], n)
    red = (frame["color"] == "red").to_numpy()
    species = np.where(x[:, 0] + red > 0.5, "alpha", np.where(x[:, 1] > 0, "beta", "gamma")).astype(object)
    flag = (x[:, 2] + x[:, 3] > 0).astype(float)
    target = 3 * x[:, 4] - 2 * x[:, 5] + 10 + 0.1 * rng.normal(size=n)
    species[rng.random(n) < 0.3] = None
    flag[rng.random(n) < 0.3] = np.nan
    target[rng.random(n) < 0.3] = np.nan
    frame["species"], frame["flag"], frame["target"] = species, flag, target
    for c in ("x6", "x7"):
        frame.loc[rng.random(n) < 0.1, c] = np.nan
    return frame
