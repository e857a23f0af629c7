"""``jointtrain tune``: search static task weights and method hyperparameters, without touching test.

The ``tune:`` section of a run config names config keys (dotted, as in ``--set``) and their
candidate values::

    tune:
      search: grid            # grid (every combination) | random (n_iter draws)
      cv: 3                   # k folds over the training split; 0 = train on train, score on validation
      space:
        balancing.heuristic: [uniform, size, inverse_initial_loss, loss_scale]
        balancing.weights.parity: {distribution: loguniform, low: 0.1, high: 10}   # random search only

Each candidate is trained like ``jointtrain train`` would (same model, data, budget) and scored
by the run's model-selection score (``train.monitor``: the relative change of the primary metrics) on
the held-out fold or the validation split. scikit-learn supplies the candidate lists
(``ParameterGrid`` / ``ParameterSampler``) and the folds (``KFold``). The ranking goes to
``output_dir/tune/tune.json``; the winning config (base config + best values) to
``output_dir/tune/best.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import RunConfig, apply_overrides, load_config, read_yaml
from ..data import DataBundle, Source
from ..errors import ConfigError
from ..evaluation import Results, mean_results, metric_senses, monitored_value
from ..io import atomic_write_json, atomic_write_text
from ..spec import from_dict
from .builder import Experiment

SEARCHES = ("grid", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")


@dataclass
class TuneSpec:
    """The ``tune:`` section."""

    space: dict[str, Any] = field(default_factory=dict)  # dotted config key -> values or {distribution, low, high}
    search: str = "grid"  # grid | random
    n_iter: int = 10  # random search: candidates drawn
    cv: int = 0  # folds over the training split (>= 2); 0 = score on the validation split
    seed: int = 0  # of the random draws and of the folds


def _sklearn() -> Any:
    try:
        from sklearn import model_selection
    except ImportError as e:
        raise ConfigError("jointtrain tune needs scikit-learn: pip install 'jointtrain[report]'") from e
    return model_selection


def distribution(key: str, spec: Any) -> Any:
    """A candidate list, or a scipy distribution from ``{distribution, low, high}``."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"tune.space.{key} is an empty list; give at least one value")
        return spec
    if not isinstance(spec, Mapping) or spec.get("distribution") not in DISTRIBUTIONS:
        raise ConfigError(
            f"tune.space.{key} must be a list of values or {{distribution: {'|'.join(DISTRIBUTIONS)}, low, high}}, "
            f"got {spec!r}"
        )
    from scipy import stats

    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        raise ConfigError(f"tune.space.{key} needs numbers low < high, got low={low!r}, high={high!r}")
    if spec["distribution"] == "loguniform":
        if low <= 0:
            raise ConfigError(f"tune.space.{key}: a loguniform distribution needs low > 0, got {low}")
        return stats.loguniform(low, high)
    if spec["distribution"] == "randint":
        return stats.randint(int(low), int(high) + 1)
    return stats.uniform(low, high - low)


def candidates(spec: TuneSpec) -> list[dict[str, Any]]:
    """The parameter settings to try, in order."""
    ms = _sklearn()
    space = {k: distribution(k, v) for k, v in spec.space.items()}
    if spec.search == "grid":
        lists = [k for k, v in space.items() if not isinstance(v, list)]
        if lists:
            raise ConfigError(f"grid search needs lists of values; {lists} are distributions: use search: random")
        return [dict(sorted(p.items())) for p in ms.ParameterGrid(space)]
    return [dict(sorted(p.items())) for p in ms.ParameterSampler(space, spec.n_iter, random_state=spec.seed)]


def plain(value: Any) -> Any:
    """numpy scalars from scipy draws -> Python numbers (for YAML/JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def candidate_config(raw: dict[str, Any], params: Mapping[str, Any]) -> RunConfig:
    overrides = [f"{k}={json.dumps(plain(v))}" for k, v in params.items()]
    return load_config(raw=apply_overrides(copy.deepcopy(raw), overrides))


def read_tune_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, TuneSpec, dict[str, Any]]:
    raw = apply_overrides(read_yaml(path), overrides)
    if not raw.get("tune"):
        raise ConfigError(f"{path} has no 'tune:' section; add tune.space (config key -> candidate values)")
    spec: TuneSpec = from_dict(TuneSpec, raw.pop("tune"), "tune")
    if not spec.space:
        raise ConfigError(f"{path}: tune.space is empty; name config keys and their candidate values")
    if spec.search not in SEARCHES:
        raise ConfigError(f"{path}: tune.search must be one of {', '.join(SEARCHES)}, got '{spec.search}'")
    if spec.cv == 1 or spec.cv < 0:
        raise ConfigError(f"{path}: tune.cv must be 0 (validation split) or >= 2 folds, got {spec.cv}")
    if spec.search == "random" and spec.n_iter < 1:
        raise ConfigError(f"{path}: tune.n_iter must be >= 1, got {spec.n_iter}")
    return load_config(raw=copy.deepcopy(raw)), spec, raw


def folds(data: DataBundle, k: int, seed: int) -> list[DataBundle]:
    """k train/held-out splits of the training sources (each source split on its own: per-task data too)."""
    ms = _sklearn()
    per_source = []
    for source in data.train:
        if len(source) < k:
            raise ConfigError(f"training source '{source.name}' has {len(source)} samples, fewer than cv={k} folds")
        per_source.append(list(ms.KFold(k, shuffle=True, random_state=seed).split(np.arange(len(source)))))

    def subset(source: Source, index: np.ndarray) -> Source:
        return dataclasses.replace(source, dataset=torch.utils.data.Subset(source.dataset, index.tolist()))

    return [
        dataclasses.replace(
            data,
            train=[subset(s, splits[f][0]) for s, splits in zip(data.train, per_source, strict=True)],
            val=[subset(s, splits[f][1]) for s, splits in zip(data.train, per_source, strict=True)],
            test=[],
            task_sizes={},
        )
        for f in range(k)
    ]


def fit(config: RunConfig, data: DataBundle) -> Results:
    """Train ``config`` on ``data.train`` (no run directory); its best results on ``data.val``."""
    experiment = Experiment(config).with_overrides({"train.progress": False})
    return experiment.trainer(data=data, out_dir=None).fit()["best_val"]


def tune(base: RunConfig, spec: TuneSpec, raw: dict[str, Any], log: Any = print) -> dict[str, Any]:
    """Score every candidate; write the ranking and the winning config.

    Candidates are ranked by the run's monitor; for ``score`` (relative change of the primary
    metrics) the reference of each fold is the mean over all candidates, so scores compare.
    """
    experiment = Experiment(base)
    settings = candidates(spec)
    configs = [candidate_config(raw, p) for p in settings]
    for params, config in zip(settings, configs, strict=True):
        try:  # every candidate must build before anything trains
            Experiment(config).balancer()
        except ConfigError as e:
            raise ConfigError(f"tune candidate {params}: {e}") from e
    data = experiment.data
    if spec.cv == 0 and not data.val:
        raise ConfigError("tune.cv: 0 scores on the validation split, but the data has none; set tune.cv >= 2")
    splits = folds(data, spec.cv, spec.seed) if spec.cv else [data]
    where = f"{spec.cv}-fold cross-validation" if spec.cv else "the validation split"
    log(f"tune: {len(settings)} candidate(s) x {len(splits)} fit(s), scored on {where}")
    results = []
    for i, (params, config) in enumerate(zip(settings, configs, strict=True)):
        results.append([fit(config, split) for split in splits])
        log(f"  [{i + 1}/{len(settings)}] trained {params}")
    senses = metric_senses(experiment.model(data))
    references = [mean_results([r[f] for r in results]) for f in range(len(splits))]
    trials = []
    for params, per_fold in zip(settings, results, strict=True):
        scores = [
            monitored_value(r, base.train.monitor, ref, senses) for r, ref in zip(per_fold, references, strict=True)
        ]
        mean = float(np.mean(scores))
        std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
        trials.append({"params": {k: plain(v) for k, v in params.items()}, "scores": scores, "mean": mean, "std": std})
        log(f"  score {mean:.4f} ± {std:.4f}  {trials[-1]['params']}")
    ranking = sorted(trials, key=lambda t: -t["mean"] if math.isfinite(t["mean"]) else math.inf)
    out = Path(base.output_dir) / "tune"
    best_raw = apply_overrides(copy.deepcopy(raw), [f"{k}={json.dumps(v)}" for k, v in ranking[0]["params"].items()])
    header = f"# written by jointtrain tune: best of {len(trials)} candidate(s) on {where}\n"
    atomic_write_text(out / "best.yaml", header + yaml.safe_dump(best_raw, sort_keys=False))
    result = {
        "monitor": base.train.monitor,
        "scored_on": where,
        "search": spec.search,
        "ranking": ranking,
        "best_config": str(out / "best.yaml"),
    }
    atomic_write_json(out / "tune.json", result)
    return result


def format_ranking(result: Mapping[str, Any]) -> str:
    lines = [f"ranking ({result['monitor']} on {result['scored_on']}, higher is better):"]
    for rank, trial in enumerate(result["ranking"], 1):
        params = ", ".join(f"{k}={v}" for k, v in trial["params"].items())
        lines.append(f"  {rank:>2}. {trial['mean']:.4f} ± {trial['std']:.4f}  {params}")
    return "\n".join(lines)
