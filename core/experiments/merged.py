"""The merged-model baseline: train each task alone from one starting model, merge, serve every task.

What many users try instead of joint training (FusionBench, MergeBench): fine-tune the pretrained
backbone once per task, then merge the fine-tuned backbones (``core.experiments.merge``) into one
that serves every task, each task's head coming from its own single-task run. Steps:

1. the single-task runs are compare's own (``output_dir/single/<task>/seed<k>``, budget ``steps``):
   trained here if missing, reused when ``jointtrain compare`` or the verdict already made them;
2. the start ``theta_0`` is rebuilt as the trainer built it (seeded, then data, then model): the
   pretrained weights for a pretrained backbone. Every run must have started from the same one;
3. every merger and every ``lambda`` of the grid is scored on validation by ``train.monitor``
   against the single-task models' own validation results (how much merging loses); the best is
   scored once on test and saved as a model folder (``output_dir/merge/seed<k>/best``).

The result goes to ``output_dir/merge/seed<k>/merge.json``; a rerun with the same runs and settings
reads it back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import RunConfig, load_config
from ..distributed import DistEnv, resolve_device
from ..engine.rng import seed_everything
from ..engine.rundir import RunDir
from ..errors import ConfigError
from ..evaluation import Results, evaluate, metric_senses, monitored_value
from ..io import atomic_write_json
from ..model import JointModel
from .builder import Experiment
from .compare import CompareSpec, Run, as_spec, execute, method_label, plan
from .merge import MERGERS, StateDict, merge, task_vectors

BACKBONE = "backbone."


@dataclass
class MergeSpec:
    """How the single-task backbones are merged."""

    methods: list[Any] = field(default_factory=lambda: ["task_arithmetic", "ties"])  # mergers: name or {name, **kw}
    lambdas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.5])  # scales tried on validation


def validate(base: RunConfig, spec: MergeSpec) -> None:
    architecture = (base.model.architecture or {}).get("name", "hard")
    if architecture != "hard":
        raise ConfigError(
            f"the merged baseline needs hard sharing (one backbone, one head per task); the config's "
            f"architecture is '{architecture}'. Remove model.architecture for this baseline."
        )
    if not spec.lambdas or any(not (isinstance(x, (int, float)) and x > 0) for x in spec.lambdas):
        raise ConfigError(f"merge.lambdas must be positive numbers, got {spec.lambdas}")
    if not spec.methods:
        raise ConfigError("merge.methods is empty; list mergers, e.g. [task_arithmetic, ties]")
    for method in spec.methods:
        name = as_spec(method).get("name")
        if not isinstance(name, str):
            raise ConfigError(f"merge.methods entry {method!r} must be a name or a {{name, ...}} mapping")
        MERGERS.get(name)


def single_runs(base: RunConfig, seed: int) -> dict[str, Run]:
    """Compare's single-task runs (budget ``steps``) of ``seed``: the same configs and directories."""
    runs = plan(base, CompareSpec(methods=["ew"], seeds=seed + 1, budgets=["steps"]))
    return {run.task: run for run in runs if run.kind == "single" and run.seed == seed and run.task}


def start_state(config: RunConfig) -> dict[str, Tensor]:
    """The backbone a run of ``config`` started from, rebuilt as the trainer builds it."""
    experiment = Experiment(config)
    seed_everything(config.train.seed)
    model = experiment.model(experiment.data)
    return {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE)}


def merged_baseline(
    base: RunConfig,
    spec: MergeSpec,
    seed: int = 0,
    single: Mapping[str, str | Path] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Merge the single-task backbones, pick merger and ``lambda`` on validation, score test once.

    ``single``: a finished single-task run directory per task (default: compare's runs of ``seed``,
    trained here when missing). Returns (and writes) ``merge.json``'s content.
    """
    validate(base, spec)
    if single is None:
        runs = single_runs(base, seed)
        for run in runs.values():
            execute(run, log)
        single = {task: run.dir for task, run in runs.items()}
    missing = [t for t in base.tasks if t not in single]
    if missing:
        raise ConfigError(f"the merged baseline needs a single-task run of every task; none given for {missing}")
    out_dir = Path(base.output_dir) / "merge" / f"seed{seed}"
    dirs = {t: str(Path(single[t])) for t in base.tasks}
    settings = {"methods": spec.methods, "lambdas": spec.lambdas, "monitor": base.train.monitor}
    done = out_dir / "merge.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("single_runs") == dirs and previous.get("settings") == settings:
            log(f"  [done]    {out_dir}")
            return previous

    models = {t: JointModel.from_pretrained(RunDir(d).model("best"), tasks=[t]).state_dict() for t, d in dirs.items()}
    starts = {t: start_state(load_config(RunDir(d).config)) for t, d in dirs.items()}
    start = starts[next(iter(base.tasks))]
    for task, other in starts.items():
        if other.keys() != start.keys() or not all(v.equal(start[k]) for k, v in other.items()):
            raise ConfigError(
                f"the single-task run of '{task}' started from another backbone than the others' (a random "
                "initialisation that depends on the task?); task arithmetic needs one common start"
            )
    backbones = {t: {k: v for k, v in state.items() if k.startswith(BACKBONE)} for t, state in models.items()}
    vectors = task_vectors(start, backbones)

    joint = Experiment(base).with_overrides({"finetune": None})
    seed_everything(seed)
    data = joint.data
    model = joint.model(data)
    env = DistEnv(device=resolve_device(base.train.device))
    model.to(env.device)
    heads = {k: v for t, state in models.items() for k, v in state.items() if k.startswith(f"heads.{t}.")}
    senses = metric_senses(model)
    reference: Results = {t: RunDir(d).summary()["val"][t] for t, d in dirs.items()}

    def load(state: StateDict) -> None:
        model.load_state_dict({**state, **heads}, strict=True)

    candidates = []
    for method in spec.methods:
        kwargs = {k: v for k, v in as_spec(method).items() if k != "name"}
        for lam in spec.lambdas:
            load(merge(as_spec(method)["name"], start, vectors, lam, **kwargs))
            val = evaluate(model, data.val, base.loading, env)
            score = monitored_value(val, base.train.monitor, reference, senses)
            candidates.append({"method": method_label(method), "spec": as_spec(method), "lambda": lam, "val": val})
            candidates[-1]["score"] = score
            log(f"  merge {method_label(method)} lambda={lam:g}: {base.train.monitor} {score:+.3f}")
    best = max(candidates, key=lambda c: c["score"] if math.isfinite(c["score"]) else -math.inf)
    kwargs = {k: v for k, v in best["spec"].items() if k != "name"}
    load(merge(best["spec"]["name"], start, vectors, best["lambda"], **kwargs))
    test = evaluate(model, data.test, base.loading, env) if data.test else {}
    model_dir = model.save_pretrained(out_dir / "best", results={"val": best["val"], "test": test})
    result = {
        "seed": seed,
        "method": best["method"],
        "lambda": best["lambda"],
        "val": best["val"],
        "tasks": test,
        "single_val": reference,
        "candidates": [{k: v for k, v in c.items() if k != "spec"} for c in candidates],
        "selection": f"{base.train.monitor} on validation against the single-task models",
        "settings": settings,
        "single_runs": dirs,
        "model_dir": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_json(done, result)
    return result
