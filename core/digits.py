"""A small real demo dataset for core: scikit-learn's handwritten digits with related tasks.

Tasks on the same 8x8 images: ``digit`` (10 classes), ``parity`` (even/odd) and ``large``
(digit >= 5). ``label_fraction`` hides labels at random (missing labels are normal);
``regime="per_task"`` splits the training images into one disjoint dataset per task.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import DATASETS, DataBundle, DictDataset, Source
from .errors import ConfigError

TOY_TASKS = {
    "digit": lambda y: y,
    "parity": lambda y: y % 2,
    "large": lambda y: (y >= 5).astype(np.int64),
}


def _split(n: int, seed: int, fractions: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(n * fractions[0]), int(n * fractions[1])
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


@DATASETS.register("sklearn_digits")
def sklearn_digits(
    tasks: list[str] = ("digit", "parity", "large"),  # type: ignore[assignment]
    regime: str = "shared",
    label_fraction: float = 1.0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> DataBundle:
    """1797 digits, seeded train/val/test split; labels hidden only in the training split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConfigError("the sklearn_digits demo needs scikit-learn: pip install scikit-learn") from e
    unknown = [t for t in tasks if t not in TOY_TASKS]
    if unknown:
        raise ConfigError(f"unknown sklearn_digits tasks {unknown}; valid: {', '.join(TOY_TASKS)}")
    if regime not in ("shared", "per_task"):
        raise ConfigError(f"regime must be 'shared' or 'per_task', got '{regime}'")
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = digits.target.astype(np.int64)
    train, val, test = _split(len(y), seed, (val_fraction, test_fraction))
    rng = np.random.default_rng(seed + 1)

    def labels(index: np.ndarray, hide: bool) -> dict[str, torch.Tensor]:
        out = {}
        for t in tasks:
            lab = TOY_TASKS[t](y[index]).copy()
            if hide and label_fraction < 1:
                lab[rng.random(len(lab)) >= label_fraction] = -1
            out[t] = torch.from_numpy(lab)
        return out

    def source(name: str, index: np.ndarray, source_tasks: list[str], hide: bool) -> Source:
        labelled = labels(index, hide)
        return Source(name, DictDataset({"inputs": x[index], **{t: labelled[t] for t in source_tasks}}), source_tasks)

    if regime == "shared":
        train_sources = [source("digits", train, list(tasks), hide=True)]
    else:
        parts = np.array_split(np.random.default_rng(seed + 2).permutation(train), len(tasks))
        train_sources = [source(t, part, [t], hide=True) for t, part in zip(tasks, parts, strict=True)]
    return DataBundle(
        train=train_sources,
        val=[source("digits", val, list(tasks), hide=False)],
        test=[source("digits", test, list(tasks), hide=False)],
        backbone_updates={"in_dim": 64},
        extra={"predictor": "tensor", "input_shape": [64]},
    )
