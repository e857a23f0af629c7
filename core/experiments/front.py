"""The trade-off front: short runs at fixed task weights, their non-dominated set, the balancing methods on it.

Careful studies of multi-task optimisers (Xin et al. 2022; Kurin et al. 2022; Royer et al. 2023)
find that fixed task weights, tuned as carefully, trace a front that most balancing methods do not
beat. This module lets a user check that on their own data:

- a design of fixed weights (:func:`weight_design`): for two tasks a line, for more the simplex's
  vertices, its centre and a Halton sequence mapped onto it (a few dozen points cover it evenly,
  where a lattice's size grows combinatorially with the number of tasks). Weights sum to K, the
  scale of equal weighting, so every point sees the same overall learning rate;
- an equal tuning budget: every fixed-weight point and every balancing method is trained at the
  same learning rates (``train.lr`` times each of ``lr_scales``) and seeds, and keeps the rate whose
  validation selection score (``train.monitor``, against one common reference) is best;
- the non-dominated set of the fixed points on validation, each task's primary metric oriented by
  its sense (:func:`non_dominated`), and each method placed on it with its step time.

Each run is an ordinary run directory (``compare.execute``: finished runs are reused, interrupted
ones resumed), under ``output_dir/front/<point>/lr<scale>/seed<k>``; a method at scale 1 is
compare's own joint run (``output_dir/joint/<method>/seed<k>``), shared when both are asked for.
The result goes to ``output_dir/front/front.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..errors import ConfigError
from ..evaluation import Results, mean_results, metric_senses, monitored_value, primary_metric
from ..io import atomic_write_json
from .builder import Experiment
from .compare import Run, as_spec, dir_name, execute, method_label

#: the first primes: one Halton base per simplex coordinate
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)


@dataclass
class FrontSpec:
    """What the front trains."""

    points: int | None = None  # fixed-weight points; None: 9 for two tasks, 5 per task for more
    lr_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # the LR search every row gets
    seeds: int = 1  # runs per (point or method, learning rate), train.seed = 0 .. seeds-1
    methods: list[Any] = field(default_factory=lambda: ["ew"])  # balancing methods placed on the front


# -- the design ------------------------------------------------------------------------------
def radical_inverse(index: int, base: int) -> float:
    """The ``index``-th van der Corput number in ``base`` (digits mirrored behind the point)."""
    out, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        out += digit * scale
        scale /= base
    return out


def simplex_point(cube: Sequence[float]) -> list[float]:
    """A point of the unit cube [0, 1]^(K-1) -> the probability simplex of K coordinates: the spacings
    of the sorted coordinates (uniform points map to uniform points, even ones stay even)."""
    cuts = [0.0, *sorted(cube), 1.0]
    return [b - a for a, b in itertools.pairwise(cuts)]


def weight_design(tasks: Sequence[str], points: int | None = None) -> list[dict[str, float]]:
    """Fixed task weights summing to K: for two tasks ``points`` evenly spaced on the line (both ends
    included: one task alone), for more the vertices, the centre, then Halton points on the simplex."""
    k = len(tasks)
    if k < 2:
        raise ConfigError(f"a trade-off front needs at least two tasks, got {list(tasks)}")
    n = points if points is not None else (9 if k == 2 else 5 * k)
    least = 3 if k == 2 else k + 2
    if n < least:
        raise ConfigError(f"front.points must be >= {least} for {k} tasks (both ends and a middle), got {n}")
    if k - 1 > len(PRIMES):
        raise ConfigError(f"the simplex design covers up to {len(PRIMES) + 1} tasks, got {k}")
    if k == 2:
        design = [[i / (n - 1), 1 - i / (n - 1)] for i in range(n)]
    else:
        design = [[float(i == j) for j in range(k)] for i in range(k)] + [[1 / k] * k]
        index = 1  # index 0 is the cube's corner: a vertex again
        while len(design) < n:
            design.append(simplex_point([radical_inverse(index, p) for p in PRIMES[: k - 1]]))
            index += 1
    return [{t: round(k * w, 6) for t, w in zip(tasks, row, strict=True)} for row in design]


def weights_label(weights: Mapping[str, float]) -> str:
    return "w(" + ",".join(f"{t}={w:.3g}" for t, w in weights.items()) + ")"


# -- the non-dominated set -------------------------------------------------------------------
def non_dominated(values: np.ndarray) -> np.ndarray:
    """Mask of the rows no other row dominates (>= in every column, > in one); higher is better in
    every column. Equal rows do not dominate each other: duplicates on the front are all kept."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be a (points, tasks) matrix, got shape {values.shape}")
    geq = (values[:, None, :] >= values[None, :, :]).all(-1)  # geq[i, j]: i at least as good as j everywhere
    gt = (values[:, None, :] > values[None, :, :]).any(-1)
    return ~(geq & gt).any(0)


# -- the runs --------------------------------------------------------------------------------
@dataclass
class Row:
    """One point of the study: a fixed weighting or a balancing method, at every learning rate."""

    label: str
    kind: str  # "fixed" or "method"
    balancing: dict[str, Any]
    weights: dict[str, float] | None = None


def rows(base: RunConfig, spec: FrontSpec) -> list[Row]:
    out = [
        Row(weights_label(w), "fixed", {"name": "ew", "weights": w}, w)
        for w in weight_design(list(base.tasks), spec.points)
    ]
    out += [Row(method_label(m), "method", as_spec(m)) for m in spec.methods]
    return out


def validate(spec: FrontSpec) -> None:
    if not spec.lr_scales or any(not (isinstance(s, (int, float)) and s > 0) for s in spec.lr_scales):
        raise ConfigError(f"front.lr_scales must be positive numbers, got {spec.lr_scales}")
    if len(set(spec.lr_scales)) != len(spec.lr_scales):
        raise ConfigError(f"front.lr_scales repeats a value: {spec.lr_scales}")
    if spec.seeds < 1:
        raise ConfigError(f"front.seeds must be >= 1, got {spec.seeds}")


def plan_front(base: RunConfig, spec: FrontSpec) -> list[tuple[Row, float, Run]]:
    """Every run of the front: (row, learning-rate scale, run), each a full config with its own directory."""
    validate(spec)
    root = Path(base.output_dir)
    experiment = Experiment(base).with_overrides({"finetune": None})  # as compare: one stage for every row
    planned = []
    for row in rows(base, spec):
        for scale in spec.lr_scales:
            shared = row.kind == "method" and scale == 1.0  # compare's joint run of this method
            where = root / "joint" / dir_name(row.label) if shared else root / "front" / dir_name(row.label)
            where = where if shared else where / f"lr{scale:g}"
            exp = experiment.with_overrides({"balancing": row.balancing})
            for seed in range(spec.seeds):
                overrides = [f"output_dir={where / f'seed{seed}'}", f"train.seed={seed}"]
                if not shared:
                    overrides.append(f"train.lr={base.train.lr * scale!r}")
                run = Run("front", row.label, seed, exp.with_overrides(overrides).config)
                planned.append((row, scale, run))
    return planned


def step_time(run_dir: Path) -> float | None:
    """Median seconds per optimizer step, from the metrics log's training records: intervals that
    span a validation or a resume are left out (they are not steps)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rates, previous = [], None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") != "train" or "time" not in record:
            previous = None
            continue
        if previous is not None and record["step"] > previous["step"]:
            rates.append((record["time"] - previous["time"]) / (record["step"] - previous["step"]))
        previous = record
    return statistics.median(rates) if rates else None


# -- the study -------------------------------------------------------------------------------
def trade_off_front(base: RunConfig, spec: FrontSpec, log: Any = print) -> dict[str, Any]:
    """Train (or reuse) every run; per row keep the best learning rate on validation; the front of the
    fixed points and each method's place on it. Writes and returns ``front.json``'s content."""
    planned = plan_front(base, spec)
    tasks = list(base.tasks)
    log(f"front: {len(planned)} run(s) under {Path(base.output_dir) / 'front'}")
    results: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for i, (row, scale, run) in enumerate(planned):
        log(f"  [{i + 1}/{len(planned)}] {row.label} lr x{scale:g} seed {run.seed}")
        result = execute(run, log)
        entry = {**result, "dir": str(run.dir), "step_time_s": step_time(run.dir)}
        results.setdefault((row.label, scale), []).append(entry)

    senses = metric_senses(Experiment(base).model())
    val = {key: mean_results([r["val"] for r in rs]) for key, rs in results.items()}
    reference = mean_results(list(val.values()))  # one reference: scores of different rows compare
    metrics = {t: primary_metric(reference[t]) for t in tasks}
    hib = {t: senses[t][metrics[t]].higher_is_better for t in tasks}

    points = []
    for row in rows(base, spec):
        monitor = base.train.monitor
        scores = {s: monitored_value(val[(row.label, s)], monitor, reference, senses) for s in spec.lr_scales}
        scale = max(spec.lr_scales, key=lambda s: scores[s] if math.isfinite(scores[s]) else -math.inf)
        chosen: list[dict[str, Any]] = results[(row.label, scale)]
        test: Results = mean_results([r["tasks"] for r in chosen])
        times = [r["step_time_s"] for r in chosen if r["step_time_s"] is not None]
        points.append(
            {
                "label": row.label,
                "kind": row.kind,
                **({"weights": row.weights} if row.weights is not None else {"method": row.balancing}),
                "lr": base.train.lr * scale,
                "lr_scale": scale,
                "scores": {f"{s:g}": v for s, v in scores.items()},
                "val": {t: val[(row.label, scale)][t][metrics[t]] for t in tasks},
                "test": {t: test[t][metrics[t]] for t in tasks if t in test},
                "step_time_s": float(np.mean(times)) if times else None,
                "run_dirs": [r["dir"] for r in chosen],
            }
        )
    place(points, tasks, hib)
    runs_per_row = len(spec.lr_scales) * spec.seeds
    budget = {
        "lrs": [base.train.lr * s for s in spec.lr_scales],
        "lr_scales": list(spec.lr_scales),
        "seeds": spec.seeds,
        "steps": base.train.max_steps,
        "runs_per_point": runs_per_row,
        "runs": len(planned),
        "selection": f"{base.train.monitor} on validation",
        "text": (
            f"every fixed-weight point and every method got the same search: {len(spec.lr_scales)} learning "
            f"rate(s) ({', '.join(f'{base.train.lr * s:.3g}' for s in spec.lr_scales)}) x {spec.seeds} seed(s) "
            f"of {base.train.max_steps} steps, the rate kept by {base.train.monitor} on validation "
            f"({len(planned)} runs in all)"
        ),
    }
    out = {
        "tasks": tasks,
        "metrics": metrics,
        "higher_is_better": hib,
        "budget": budget,
        "points": points,
        "front": [p["label"] for p in points if p["kind"] == "fixed" and p["on_front"]],
    }
    atomic_write_json(Path(base.output_dir) / "front" / "front.json", out)
    return out


def place(points: list[dict[str, Any]], tasks: Sequence[str], hib: Mapping[str, bool]) -> None:
    """Mark the fixed points on the front and, for every point, the fixed points that dominate it."""
    sign = np.array([1.0 if hib[t] else -1.0 for t in tasks])
    fixed = [p for p in points if p["kind"] == "fixed"]
    values = sign * np.array([[p["val"][t] for t in tasks] for p in fixed])
    on_front = non_dominated(values)
    for p in points:
        v = sign * np.array([p["val"][t] for t in tasks])
        p["dominated_by"] = [q["label"] for q, w in zip(fixed, values, strict=True) if (w >= v).all() and (w > v).any()]
    for p, front in zip(fixed, on_front, strict=True):
        p["on_front"] = bool(front)
    for p in points:
        if p["kind"] != "fixed":
            p["on_front"] = not p["dominated_by"]
