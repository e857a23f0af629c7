"""The ``table`` path against a ridge regression tuned on validation, per regression target.

    OMP_NUM_THREADS=1 python scripts/bench_table_linear.py          # the generated near-linear table
    python scripts/bench_table_linear.py --config my_table.yaml --set train.max_steps=2000

Trains the config through ``jointtrain train``'s path, then fits, per regression task, a ridge on
the same training rows (numeric features median-imputed with missing indicators and
standardised, categories one-hot), its alpha chosen by validation MAE; prints the test MAE of
both and their ratio, and writes them to ``RUN/ridge_comparison.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import Source
from core.errors import JointTrainError
from core.experiments.builder import Experiment
from core.experiments.run import train
from core.io import atomic_write_json
from core.rundir.directory import RunDir

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "table_linear.yaml"
ALPHAS = np.logspace(-6, 3, 19)


def design(sources: Sequence[Source], task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw numeric, category codes, labels) of the rows of ``sources`` labelled for ``task``."""
    parts = [
        (s.dataset.numeric.numpy(), s.dataset.categorical.numpy(), s.dataset.labels[task].numpy())
        for s in sources
        if task in s.tasks
    ]
    x, codes, y = (np.concatenate(p) for p in zip(*parts, strict=True))
    keep = ~np.isnan(y)
    return x[keep], codes[keep], y[keep]


class RidgeFeatures:
    """Fitted on training rows: medians, missing indicators, standardisation, one-hot categories."""

    def __init__(self, x: np.ndarray, codes: np.ndarray) -> None:
        self.median = np.nan_to_num(np.nanmedian(np.where(np.isfinite(x), x, np.nan), 0))
        self.levels = [np.unique(codes[:, j]) for j in range(codes.shape[1])]
        raw = self._raw(x, codes)
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-12

    def _raw(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        missing = ~np.isfinite(x)
        onehot = [codes[:, [j]] == levels[None] for j, levels in enumerate(self.levels)]
        return np.concatenate([np.where(missing, self.median, x), missing, *onehot], 1).astype(np.float64)

    def __call__(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return (self._raw(x, codes) - self.mean) / self.std


def tuned_ridge(experiment: Experiment, task: str) -> dict[str, Any]:
    """Test MAE of the ridge whose alpha has the lowest validation MAE."""
    from sklearn.linear_model import Ridge

    data = experiment.data
    x, codes, y = design(data.train, task)
    features = RidgeFeatures(x, codes)
    xv, cv, yv = design(data.val, task)
    fits = [Ridge(alpha=a).fit(features(x, codes), y) for a in ALPHAS]
    val_mae = [float(np.abs(m.predict(features(xv, cv)) - yv).mean()) for m in fits]
    best = int(np.argmin(val_mae))
    xt, ct, yt = design(data.test, task)
    predicted = fits[best].predict(features(xt, ct))
    return {
        "alpha": float(ALPHAS[best]),
        "val_mae": val_mae[best],
        "test_mae": float(np.abs(predicted - yt).mean()),
        "test_pearson": float(np.corrcoef(predicted, yt)[0, 1]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--output-dir", help="run directory (default: the config's); a folder holding a run is refused")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [*args.set, "train.progress=false", *([f"output_dir={args.output_dir}"] if args.output_dir else [])]
    experiment = Experiment.from_file(args.config, overrides)
    config = experiment.config

    start = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - start
    model = RunDir(config.output_dir).summary()["tasks"]
    regressions = [t for t, u in experiment.data.task_updates.items() if u.get("type") == "regression"]
    if not regressions:
        raise JointTrainError(f"{args.config} has no regression task to compare with a ridge")
    rows: dict[str, dict[str, Any]] = {}
    for task in regressions:
        ridge = tuned_ridge(experiment, task)
        rows[task] = {"table_mae": model[task]["mae"], "ridge": ridge, "ratio": model[task]["mae"] / ridge["test_mae"]}
    ratios = [r["ratio"] for r in rows.values()]
    report = {"tasks": rows, "max_ratio": max(ratios), "mean_ratio": float(np.mean(ratios)), "train_s": seconds}
    atomic_write_json(Path(config.output_dir) / "ridge_comparison.json", report)

    print(f"\ntest MAE, table path ({summary['step']} steps, {seconds:.0f} s) vs ridge tuned on validation")
    print(f"{'task':<14}{'table':>12}{'ridge':>12}{'ratio':>8}{'ridge alpha':>13}{'ridge r':>9}")
    for task, r in rows.items():
        ridge = r["ridge"]
        print(
            f"{task:<14}{r['table_mae']:>12.4g}{ridge['test_mae']:>12.4g}{r['ratio']:>8.2f}"
            f"{ridge['alpha']:>13.2g}{ridge['test_pearson']:>9.5f}"
        )
    print(f"ratio: max {report['max_ratio']:.2f}, mean {report['mean_ratio']:.2f}")
    print(f"report: {Path(config.output_dir) / 'ridge_comparison.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except JointTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
