"""``jointtrain`` command line: train, evaluate, predict, compare, tune, report, list.

Everything heavy is imported inside the commands, so ``jointtrain --help`` answers at once.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, JointTrainError


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus the ``--output-dir`` / ``--device`` shortcuts."""
    extra = [f"output_dir={args.output_dir}"] if args.output_dir else []
    extra += [f"train.device={args.device}"] if getattr(args, "device", None) else []
    return [*(args.set or []), *extra]


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiments.run import train

    config = load_config(args.config, _overrides(args))
    report = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 130 if report.get("status") == "interrupted" else 0
    if report.get("status") == "interrupted":
        # the run's own resolved config holds every override: resuming from it continues this run
        saved = shlex.quote(str((Path(config.output_dir) / "config.yaml").absolute()))
        print(
            f"interrupted at step {report['step']}; continue with: jointtrain train {saved} --resume", file=sys.stderr
        )
        return 130
    print(format_results(report["tasks"], f"{report['split']} metrics of the best checkpoint"))
    print(f"run directory: {config.output_dir}")
    return 0


def _model_dir_and_data(path: Path, model: str) -> tuple[Path, Any]:
    """A run directory (config.yaml + a model folder) or a model folder that records its data spec."""
    from .config import load_config
    from .data import Loading

    if (path / "config.yaml").is_file() and (path / model / "config.json").is_file():
        config = load_config(path / "config.yaml")
        return path / model, (config.data, config.loading, config.imports)
    model_config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    extra = model_config.get("extra", {})
    if "data" not in extra:
        raise DataError(
            f"{path} is neither a run directory (config.yaml + {model}/) nor a model folder that records its data"
        )
    return path, (extra["data"], Loading(**extra.get("loading", {})), [])


def labelled_sources(model: Any, path: Path) -> list[Any]:
    """A labelled file the user gives, read by the model's domain (``core.predict.LABELLED``)."""
    from .predict import LABELLED

    name = model.extra.get("predictor", "tensor")
    if name not in LABELLED.names():
        raise ConfigError(
            f"--data reads a labelled file for models whose predictor is one of {', '.join(LABELLED.names())}; "
            f"this model's is '{name}': evaluate it on its own data's splits (--split) instead"
        )
    if not path.exists():
        raise DataError(f"labelled file {path} does not exist")
    return LABELLED.get(name)(model, path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import plugins
    from .data import DATASETS
    from .distributed import init_distributed
    from .evaluation import evaluate
    from .hub import resolve
    from .io import atomic_write_json
    from .model import JointModel
    from .rundir.directory import RunDir

    path = resolve(args.path, args.revision)  # a hub id becomes its cached snapshot folder
    model_dir, (data_spec, loading, imports) = _model_dir_and_data(path, args.model)
    if args.out:
        check_out(Path(args.out), [Path(args.data)] if args.data else [], args.overwrite)
    plugins.load(imports)
    env = init_distributed(args.device)
    model = JointModel.from_pretrained(model_dir, map_location=env.device, trust_remote_code=args.trust_remote_code)
    if args.data:
        sources, scored = labelled_sources(model, Path(args.data)), args.data
    else:
        data = DATASETS.build(data_spec)
        sources, scored = {"train": data.train, "val": data.val, "test": data.test}[args.split], args.split
    if not sources:
        raise DataError(f"the data has no '{args.split}' split")
    results = evaluate(model, sources, loading, env)
    if env.is_main:
        written = None
        if args.out:
            key = {"data": str(args.data)} if args.data else {"split": args.split}
            atomic_write_json(args.out, {"tasks": results, **key, "model": str(model_dir)})
            written = args.out
        elif args.data is None:  # a file of the user's is not a split of the run: results.json stays as it is
            if model_dir == path:  # a bare model folder: never write into it
                raise DataError(f"{path} is a model folder; pass --out FILE for the results")
            run = RunDir(path)  # a run directory: merged into results.json beside what training wrote
            run.update_results("models", args.model, args.split, value=results)
            written = f"{run.results_file} (models.{args.model}.{args.split})"
        print(format_results(results, f"{scored} metrics of {model_dir}"))
        print(f"written: {written}" if written else "not written: pass --out FILE to keep them")
    return 0


def check_out(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """An output file never replaces an input, a run's own files or (without ``--overwrite``) any file."""
    from .rundir.directory import RunDir, refuse_artifact_path

    refuse_artifact_path(out)
    target = out.resolve()
    for given in inputs:
        if given.exists() and (target == given.resolve() or given.resolve() in target.parents):
            raise ConfigError(f"--out {out} would overwrite the input {given}; write the output elsewhere")
    for run in (RunDir(folder) for folder in target.parents):
        owned = [p.resolve() for p in (run.config, run.metrics, run.results_file, run.report, run.lock_file)]
        if run.holds_run() and (target in owned or run.plots.resolve() in target.parents):
            raise ConfigError(f"--out {out} is a file of the run {run.path}; write the output elsewhere")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name (.json, .jsonl or .csv)")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it or choose another name")


def flat_record(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"grade": {"label": "b"}}`` -> ``{"grade.label": "b"}``; lists become JSON text (one CSV cell)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flat_record(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def write_predictions(out: Path, model_dir: Path, records: list[dict[str, Any]]) -> None:
    """CSV when the name ends in ``.csv``, one JSON object a line for ``.jsonl``, a JSON document otherwise."""
    import csv
    import io

    from .io import atomic_write_json, atomic_write_text

    suffix = out.suffix.lower()
    if suffix == ".csv":
        rows = [flat_record(r) for r in records]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out, text.getvalue())
    elif suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    else:
        atomic_write_json(out, {"model": str(model_dir), "predictions": records})


def cmd_predict(args: argparse.Namespace) -> int:
    from .distributed import resolve_device
    from .model import JointModel
    from .predict import PREDICTORS

    out = Path(args.out)
    check_out(out, [Path(args.input)], args.overwrite)
    model_dir = Path(args.model)
    if (model_dir / "best" / "config.json").is_file():
        model_dir = model_dir / "best"
    tasks = args.tasks.split(",") if args.tasks else None
    model = JointModel.from_pretrained(
        model_dir,
        tasks=tasks,
        map_location=resolve_device(args.device),
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
    )
    name = model.extra.get("predictor", "tensor")
    predictor = PREDICTORS.get(name)
    options = {"min_score": args.min_score} if args.min_score is not None else {}
    if options and "min_score" not in inspect.signature(predictor).parameters:
        raise ConfigError(f"--min-score applies to models with a detection task; this one's predictor is '{name}'")
    records = predictor(model, Path(args.input), out, **options)
    write_predictions(out, model_dir, records)
    print(f"{len(records)} prediction(s) written to {out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import importlib

    from .balancing import BALANCERS
    from .registry import REGISTRIES, load_plugins

    for module in (
        "core.tasks",
        "core.sampling",
        "core.engine.optim",
        "core.predict",
        "core.digits",
        "core.architectures",
    ):
        importlib.import_module(module)
    load_plugins()
    for kind, registry in sorted(REGISTRIES.items()):
        if kind == "balancing method":
            print("balancing methods:")
            for name in registry.names():
                d = BALANCERS.get(name).describe()
                ddp = d["ddp"] if isinstance(d["ddp"], str) else "; ".join(f"{k}: {v}" for k, v in d["ddp"].items())
                print(f"  {name:<12} {d['kind']:<8} spaces={','.join(d['spaces']):<10} cost={d['cost']}")
                print(f"  {'':<12} DDP: {ddp}")
                declared = [
                    f"state: {d['state']}" if d["state"] else "stateless",
                    "randomized" if d["randomized"] else "",
                    "needs the loss values" if d.get("needs_losses") else "",
                    f"properties: {', '.join(d['properties'])}" if d.get("properties") else "",
                ]
                print(f"  {'':<12} {'; '.join(x for x in declared if x)}")
        else:
            print(f"{kind}s: {', '.join(registry.names())}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import compare, read_compare_config
    from .experiments.compare_report import format_table

    overrides = _overrides(args)
    methods = args.methods.split(",") if args.methods else None
    base, spec = read_compare_config(args.config, overrides, methods, args.seeds)
    summary = compare(base, spec)
    print(format_table(summary))
    if summary["best_overall"]:
        print(f"best joint row (Δm): {summary['best_overall']}")
    print(f"written: {Path(base.output_dir) / 'compare.json'}, {Path(base.output_dir) / 'report.md'}")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    from .experiments.verdict import read_verdict_config, verdict
    from .experiments.verdict_report import paragraph

    study = read_verdict_config(args.config, _overrides(args), args.seeds)
    result = verdict(study)
    print(paragraph(result))
    folder = Path(study.base.output_dir) / "verdict"
    print(f"written: {folder / 'results.json'}, {folder / 'report.md'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from .experiments.tune import format_ranking, read_tune_config, tune

    base, spec, raw = read_tune_config(args.config, _overrides(args))
    given = {"storage": args.storage, "study": args.study}
    spec = dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
    result = tune(base, spec, raw)
    print(format_ranking(result))
    if result["best_config"]:
        print(f"best config written to {result['best_config']}")
    if result["status"] == "interrupted":
        print(
            "interrupted: the unfinished trial goes back into the study; rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.run)
    if (path / "compare.json").is_file():
        from .experiments.compare_report import write_compare_report as writer
    elif path.name == "verdict" and (path / "results.json").is_file():
        from .experiments.verdict_report import write_verdict_report as writer
    else:
        from .reports.run_report import write_report as writer
    from .rundir.directory import RunDir

    with RunDir(path).writing():
        print(f"written: {writer(path)}")
    return 0


def format_results(results: dict[str, dict[str, float]], title: str) -> str:
    lines = [title]
    for task, metrics in results.items():
        lines.append(f"  {task:<16} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jointtrain", description="Joint (multi-task) training for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a joint model from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/last.pt")
    t.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    t.add_argument("--device", help="shortcut for --set train.device=... (auto | cpu | cuda | cuda:N)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-task metrics of a run's best model (or a model directory)")
    e.add_argument("path", help="run directory, model directory or hub id (org/name)")
    e.add_argument("--revision", help="hub ids: branch, tag or commit (default main)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument(
        "--data", help="score a labelled file of yours instead of a split (a table model: .csv/.parquet/...)"
    )
    e.add_argument("--model", default="best", help="which model of a run directory: best (default) or final")
    e.add_argument("--out", help="write the JSON here (default: merged into the run's results.json)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input or run file)")
    e.add_argument("--device", default="auto")
    e.add_argument("--trust-remote-code", action="store_true", help="allow import paths in the model's config.json")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="run a saved model on an input file")
    r.add_argument("model", help="model directory, run directory (its best/ model) or hub id (org/name)")
    r.add_argument("--revision", help="hub ids: branch, tag or commit (default main)")
    r.add_argument("input", help="input file (format depends on the model: .npy/.csv, image, text, records)")
    r.add_argument("--out", default="predictions.json", help="a .json (default), .jsonl or .csv file")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input or run file)")
    r.add_argument("--tasks", help="comma-separated subset of tasks")
    r.add_argument(
        "--min-score",
        type=float,
        help="detection: leave out boxes scoring below this (default: every box the task decodes, down to its "
        "score_threshold, 0.05 unless trained otherwise)",
    )
    r.add_argument("--device", default="auto")
    r.add_argument("--trust-remote-code", action="store_true", help="allow import paths in the model's config.json")
    r.set_defaults(func=cmd_predict)

    c = sub.add_parser("compare", help="joint training vs each task alone, per balancing method, over seeds")
    c.add_argument("config", help="a run config with an optional 'compare:' section (methods, seeds, variants)")
    c.add_argument("--methods", help="comma-separated balancing methods (replaces compare.methods)")
    c.add_argument("--seeds", type=int, help="seeds per row (replaces compare.seeds)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    c.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("verdict", help="train together, in groups or apart? intervals, task groups, serving cost")
    v.add_argument("config", help="a run config; its 'compare:' section gives the rows, 'verdict:' the intervals")
    v.add_argument("--seeds", type=int, help="seeds per row (replaces compare.seeds)")
    v.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    v.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    v.set_defaults(func=cmd_verdict)

    tu = sub.add_parser("tune", help="search task weights / hyperparameters on Optuna (CV or validation)")
    tu.add_argument("config", help="a run config with a 'tune:' section (space, sampler, n_iter, cv, pruner, ...)")
    tu.add_argument(
        "--storage",
        help="Optuna database URL holding the study (default sqlite:///OUTPUT_DIR/tune/study.db); workers "
        "given the same storage and study share its trials",
    )
    tu.add_argument("--study", help="the study's name in the storage (default: the output_dir's folder name)")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    tu.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    tu.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="(re)write report.md and plots of a run or a comparison directory")
    rp.add_argument("run", help="run directory (or a compare output_dir, or a verdict's output_dir/verdict)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list balancing methods, samplers and registered components")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except JointTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
