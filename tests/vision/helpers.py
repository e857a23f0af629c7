"""Small builders for the vision tests: a narrow real timm ResNet and tiny generated digit scenes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import RunConfig, load_config

#: a narrow ResNet-10-T (random init): real timm code, fast on 2 CPU cores
TINY_BACKBONE: dict[str, Any] = {
    "name": "timm",
    "model_name": "resnet10t",
    "out_indices": [2, 3, 4],
    "model_kwargs": {"channels": [16, 16, 32, 32], "stem_width": 8},
}


def scenes_data(root: Path, **kwargs: Any) -> dict[str, Any]:
    """A small digit-scenes dataset spec (48 px canvases, up to 3 digits)."""
    spec = {
        "name": "digit_scenes",
        "root": str(root),
        "canvas": 48,
        "train_scenes": 48,
        "val_scenes": 16,
        "test_scenes": 16,
        "max_digits": 3,
        "digit_sizes": [10, 16],
    }
    return {**spec, **kwargs}


def vision_config(tmp_path: Path, scenes_root: Path, overrides: dict[str, Any] | None = None, **data: Any) -> RunConfig:
    raw: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": TINY_BACKBONE},
        "tasks": {
            "detection": {"type": "detection", "channels": 16, "num_convs": 1, "groups": 4, "levels": [0]},
            "count": {"type": "classification", "head": "pooled"},
        },
        "data": scenes_data(scenes_root, **data),
        "loading": {"batch_size": 8},
        "train": {"max_steps": 6, "lr": 0.003, "eval_every": 3, "progress": False, "log_every": 3},
    }
    return load_config(raw=raw, overrides=[f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()])
