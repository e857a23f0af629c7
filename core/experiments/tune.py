"""``jointtrain tune``: search task weights, method and training hyperparameters on Optuna, without touching test.

The ``tune:`` section of a run config names config keys (dotted, as in ``--set``) and their
candidates::

    tune:
      sampler: tpe            # tpe (default) | random | grid (every combination once); or {name, **options}
      n_iter: 20              # trials of tpe / random (grid: one per point)
      cv: 3                   # k folds over the training split; 0 = train on train, score on validation
      pruner: median          # median (default) | percentile | hyperband | none; or {name, **options}
      storage: null           # an Optuna database URL; default sqlite:///<output_dir>/tune/study.db
      study: null             # the study's name; default: the output_dir's folder name
      space:
        balancing.heuristic: [uniform, size, inverse_initial_loss, loss_scale]
        train.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}

(``search: grid|random``, the former name of ``sampler``, is still read.) Each trial trains the
candidate like ``jointtrain train`` would (same model, data, budget) in its own run directory,
``output_dir/tune/<study>/trial-<n>[/fold-<f>]``, without the test split. Its score is the run's
model-selection score (``train.monitor``) of its best checkpoint, averaged over folds; every trial
measures it against the same reference (the config's ``baselines``, else the untrained model's
validation metrics, recorded in the study) so scores compare across trials, and the pruner compares
each validation with earlier trials' at the same step. Several processes or machines given the same
``storage`` and study share the trials; rerunning continues the study. The ranking goes to
``output_dir/tune/tune.json``; the winning config (base config + best values) to
``output_dir/tune/best.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from ..config import RunConfig, apply_overrides, load_config, read_yaml
from ..data import DataBundle, Source
from ..distributed import init_distributed
from ..engine.rng import seed_everything
from ..errors import ConfigError
from ..evaluation import Results, evaluate
from ..io import atomic_write_json, atomic_write_text
from ..spec import from_dict
from .builder import Experiment
from .tuning.searches import PRUNERS, SEARCHES, from_spec
from .tuning.space import Dimension, decoded, dimensions
from .tuning.study import claim, give_back, heartbeat, open_study, planned, shown, storage
from .tuning.trial import Outcome, run_trial

if TYPE_CHECKING:  # imported after .tuning, which says how to install Optuna when it is missing
    import optuna
    from optuna.trial import FrozenTrial


@dataclass
class TuneSpec:
    """The ``tune:`` section."""

    space: dict[str, Any] = field(default_factory=dict)  # dotted config key -> values or {distribution, low, high}
    sampler: str | dict[str, Any] | None = None  # tpe (default) | random | grid, or {name, **sampler options}
    search: str | None = None  # the former name of ``sampler`` (grid | random)
    n_iter: int = 10  # trials of tpe / random; grid runs every point once
    cv: int = 0  # folds over the training split (>= 2); 0 = score on the validation split
    seed: int = 0  # of the sampler and of the folds
    pruner: str | dict[str, Any] = "median"  # median | percentile | hyperband | none, or {name, **options}
    storage: str | None = None  # Optuna database URL shared by the workers; default: SQLite in output_dir/tune
    heartbeat_s: int = 60  # a running trial's worker pings the storage; silent for 2x this, its trial is rerun
    study: str | None = None  # the study's name in the storage; default: the output_dir's folder name

    @property
    def sampler_spec(self) -> str | dict[str, Any]:
        return self.sampler or self.search or "tpe"


def _sklearn() -> Any:
    try:
        from sklearn import model_selection
    except ImportError as e:
        raise ConfigError("jointtrain tune needs scikit-learn for its folds: pip install 'jointtrain[report]'") from e
    return model_selection


def read_tune_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, TuneSpec, dict[str, Any]]:
    raw = apply_overrides(read_yaml(path), overrides)
    if not raw.get("tune"):
        raise ConfigError(f"{path} has no 'tune:' section; add tune.space (config key -> candidate values)")
    spec: TuneSpec = from_dict(TuneSpec, raw.pop("tune"), "tune")
    if not spec.space:
        raise ConfigError(f"{path}: tune.space is empty; name config keys and their candidate values")
    if spec.sampler is not None and spec.search is not None and spec.sampler != spec.search:
        raise ConfigError(f"{path}: tune.search is the former name of tune.sampler; give one of them, not both")
    if spec.search is not None and spec.search not in ("grid", "random"):
        raise ConfigError(f"{path}: tune.search must be one of grid, random (or use tune.sampler), got '{spec.search}'")
    if spec.cv == 1 or spec.cv < 0:
        raise ConfigError(f"{path}: tune.cv must be 0 (validation split) or >= 2 folds, got {spec.cv}")
    if spec.heartbeat_s < 1:
        raise ConfigError(f"{path}: tune.heartbeat_s must be >= 1 second, got {spec.heartbeat_s}")
    if spec.n_iter < 1:
        raise ConfigError(f"{path}: tune.n_iter must be >= 1, got {spec.n_iter}")
    return load_config(raw=copy.deepcopy(raw)), spec, raw


def candidate_config(raw: dict[str, Any], params: Mapping[str, Any]) -> RunConfig:
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    return load_config(raw=apply_overrides(copy.deepcopy(raw), overrides))


def check_candidates(raw: dict[str, Any], dims: list[Dimension]) -> None:
    """Every value of every key builds (config and balancer) before anything trains."""
    for dim in dims:
        for stored in dim.probes():
            params = {dim.key: dim.decode(stored)}
            try:
                Experiment(candidate_config(raw, params)).balancer()
            except ConfigError as e:
                raise ConfigError(f"tune candidate {params}: {e}") from e


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


def references(experiment: Experiment, splits: list[DataBundle]) -> Callable[[], list[Results]]:
    """What every trial's scores are measured against, per fold: the declared baselines, else the
    untrained model's validation metrics (computed once, by the worker that creates the study)."""
    config = experiment.config

    def compute() -> list[Results]:
        if config.baselines:
            return [dict(config.baselines) for _ in splits]
        env = init_distributed(config.train.device)
        out = []
        for split in splits:
            seed_everything(config.train.seed)  # the initial weights every trial starts from
            model = experiment.model(split).to(env.device)
            out.append(evaluate(model, split.val, config.loading.resolved(env.device), env))
        return out

    return compute


def record(base: RunConfig, spec: TuneSpec) -> dict[str, Any]:
    """What a worker must share with the study to join it: the search and the config it varies."""
    config = {k: v for k, v in base.to_dict().items() if k != "output_dir"}
    config["train"] = {k: v for k, v in config["train"].items() if k not in ("device", "progress")}
    plain = {
        "space": spec.space,
        "sampler": spec.sampler_spec,
        "n_iter": spec.n_iter,
        "cv": spec.cv,
        "seed": spec.seed,
        "config": config,
    }
    return json.loads(json.dumps(plain))  # as the database stores it


def tune(base: RunConfig, spec: TuneSpec, raw: dict[str, Any], log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run this worker's share of the study's trials; write the ranking and the winning config.

    Returns the ranking (``tune.json``); ``status`` is ``interrupted`` when a trial was stopped by
    Ctrl-C / SIGTERM (its values go back into the budget: rerun to continue)."""
    dims = dimensions(spec.space)
    search = from_spec(SEARCHES, spec.sampler_spec, seed=spec.seed)
    pruner = from_spec(PRUNERS, spec.pruner)
    slots = search.slots(dims, spec.n_iter)
    check_candidates(raw, dims)
    experiment = Experiment(base)
    data = experiment.data
    if spec.cv == 0 and not data.val:
        raise ConfigError("tune.cv: 0 scores on the validation split, but the data has none; set tune.cv >= 2")
    splits = folds(data, spec.cv, spec.seed) if spec.cv else [dataclasses.replace(data, test=[])]
    out = Path(base.output_dir) / "tune"
    out.mkdir(parents=True, exist_ok=True)
    url = spec.storage or f"sqlite:///{(out / 'study.db').absolute()}"
    name = spec.study or Path(base.output_dir).absolute().name
    check_output(out / "tune.json", name, shown(url))
    study = open_study(
        storage(url, spec.heartbeat_s),
        name,
        search.sampler,
        pruner,
        record(base, spec),
        references(experiment, splits),
        slots,
    )
    refs = study.user_attrs["references"]
    where = f"{spec.cv}-fold cross-validation" if spec.cv else "the validation split"
    log(
        f"tune: study '{name}' in {shown(url)}: {study.user_attrs['budget']} trial(s) x {len(splits)} fit(s), "
        f"scored on {where}"
    )
    status = "completed"
    while (trial := claim(study)) is not None:
        params = {d.key: d.suggest(trial) for d in dims}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            with heartbeat(study, trial, spec.heartbeat_s):
                outcome = run_trial(
                    trial, candidate_config(raw, params), splits, refs, out / name / f"trial-{trial.number}"
                )
        except ConfigError as e:  # a combination of values the config refuses
            give_back(study, trial, f"ConfigError: {e}")
            raise ConfigError(f"tune trial {trial.number} {params}: {e}") from e
        except BaseException as e:  # a crash or Ctrl-C between validations: the trial goes back into the budget
            give_back(study, trial, f"{type(e).__name__}: {e}")
            raise
        if outcome.status == "interrupted":
            give_back(study, trial, "interrupted")
            status = "interrupted"
            break
        finish(study, trial, outcome)
        log(f"  trial {trial.number} {outcome.status}: {progress(study)}  {params}")
    result = summary(study, dims, base, spec, where, shown(url), raw, out, status)
    atomic_write_json(out / "tune.json", result)
    return result


def check_output(path: Path, study: str, url: str) -> None:
    """One tune folder holds one study's results: another study's tune.json is never overwritten."""
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    if (previous.get("study"), previous.get("storage")) not in ((study, url), (None, None)):
        raise ConfigError(
            f"{path} holds the results of study '{previous.get('study')}' in {previous.get('storage')}; this "
            f"search is study '{study}' in {url}: give it another --output-dir"
        )


def finish(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("steps", outcome.steps)
    trial.set_user_attr("run_dirs", outcome.run_dirs)
    if outcome.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return
    trial.set_user_attr("scores", outcome.scores)
    study.tell(trial, float(np.mean(outcome.scores)))  # NaN: Optuna records a failed trial


def progress(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def summary(
    study: optuna.Study,
    dims: list[Dimension],
    base: RunConfig,
    spec: TuneSpec,
    where: str,
    url: str,
    raw: dict[str, Any],
    out: Path,
    status: str,
) -> dict[str, Any]:
    """The study's trials so far (all workers'): the ranking of completed ones, then pruned and failed."""
    from optuna.trial import TrialState

    ranking, pruned, failed = [], [], []
    reruns = {retried_from(t): t.number for t in study.get_trials(deepcopy=False) if retried_from(t) is not None}
    for t in study.get_trials(deepcopy=False):
        entry = {"trial": t.number, "params": decoded(dims, planned(t)), "run_dirs": t.user_attrs.get("run_dirs", [])}
        if t.state == TrialState.COMPLETE:
            scores = t.user_attrs["scores"]
            std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
            ranking.append({**entry, "scores": scores, "mean": t.value, "std": std, "steps": t.user_attrs["steps"]})
        elif t.state == TrialState.PRUNED:
            last = max(t.intermediate_values, default=None)
            score = t.intermediate_values[last] if last is not None else None
            pruned.append({**entry, "steps": t.user_attrs.get("steps", []), "last_score": score})
        elif t.state == TrialState.FAIL:
            failed.append({**entry, "error": failure(t), "rerun_as": reruns.get(t.number)})
    ranking.sort(key=lambda t: -t["mean"] if math.isfinite(t["mean"]) else math.inf)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))
    result: dict[str, Any] = {
        "monitor": base.train.monitor,
        "scored_on": where,
        "search": build_name(spec.sampler_spec),
        "pruner": build_name(spec.pruner),
        "study": study.study_name,
        "storage": url,
        "status": status,
        "budget": study.user_attrs["budget"],
        "left": waiting,
        "ranking": ranking,
        "pruned": pruned,
        "failed": failed,
        "best_config": None,
    }
    if ranking:
        best_raw = apply_overrides(
            copy.deepcopy(raw), [f"{k}={json.dumps(v)}" for k, v in ranking[0]["params"].items()]
        )
        header = f"# written by jointtrain tune: best of {len(ranking)} completed trial(s) on {where}\n"
        atomic_write_text(out / "best.yaml", header + yaml.safe_dump(best_raw, sort_keys=False))
        result["best_config"] = str(out / "best.yaml")
    return result


def retried_from(trial: FrozenTrial) -> int | None:
    """The trial this one runs again: given back by a worker, or failed for its lost worker by Optuna."""
    return trial.user_attrs.get("retry_of", trial.system_attrs.get("failed_trial"))


def failure(trial: FrozenTrial) -> str:
    if "error" in trial.user_attrs:  # given back by its worker: the exception, or "interrupted"
        return str(trial.user_attrs["error"])
    if "scores" in trial.user_attrs:  # trained to the end; Optuna fails a NaN objective
        return "a score is not a number (the fit diverged)"
    return "its worker stopped sending heartbeats (killed or lost)"


def build_name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec.get("name"))


def format_ranking(result: Mapping[str, Any]) -> str:
    lines = [
        f"study '{result['study']}' in {result['storage']}: {len(result['ranking'])} completed, "
        f"{len(result['pruned'])} pruned, {len(result['failed'])} failed, {result['left']} left",
        f"ranking ({result['monitor']} on {result['scored_on']}, higher is better):",
    ]
    for rank, trial in enumerate(result["ranking"], 1):
        params = ", ".join(f"{k}={v}" for k, v in trial["params"].items())
        lines.append(f"  {rank:>2}. {trial['mean']:.4f} ± {trial['std']:.4f}  {params}  (trial {trial['trial']})")
    return "\n".join(lines)
