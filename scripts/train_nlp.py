"""Fine-tune one text encoder jointly on several NLP tasks and compare with simple baselines.

Defaults: the bundled corpora (sentiment, subjectivity, Twitter NER; prepared into a local
cache on first use) and the offline all-MiniLM-L6-v2 encoder, sized for a small CPU.

    python scripts/train_nlp.py                          # joint run + TF-IDF / lexicon baselines (tuned on validation)
    python scripts/train_nlp.py --single-task            # also each task alone, same step budget
    python scripts/train_nlp.py --tasks sentiment        # one task alone
    python scripts/train_nlp.py --generation --single-task  # text-to-text tasks, each with its decoder
    python scripts/train_nlp.py --device cuda --set train.max_steps=2000
    jointtrain predict runs/nlp_demo texts.txt --out predictions.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from core.cli import format_results
from core.config import RunConfig
from core.errors import JointTrainError
from core.experiments.builder import Experiment
from core.experiments.run import train
from core.hub import write_card
from core.io import atomic_write_json
from core.model import JointModel
from core.reports.run_report import record_baselines

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "nlp_demo.yaml"
GENERATION_CONFIG = Path(__file__).parent / "configs" / "nlp_generation.yaml"
EXAMPLES = [
    "A warm, funny and beautifully acted film that never outstays its welcome.",
    "The plot drags and the jokes fall flat.",
    "Watching the Lakers game with Alice in Los Angeles tonight",
]


def examples(config: RunConfig) -> list[str]:
    """Texts to show predictions on: fixed ones, or the first test input of each generation task."""
    from nlp.demo import GENERATION_TASKS

    generation = [t for t in config.tasks if t in GENERATION_TASKS]
    if config.data.get("name") != "nlp_demo" or not generation:
        return EXAMPLES
    from nlp import gen_corpora

    root = gen_corpora.prepare(config.data.get("cache"))
    return [gen_corpora.read_split(root, task, "test")[0]["text"] for task in generation]


def run(config: RunConfig) -> dict[str, Any]:
    start = time.perf_counter()
    report = train(config)
    report["wall_time_s"] = time.perf_counter() - start
    write_card(Path(config.output_dir) / "best")  # now with the test metrics the run just wrote
    return report


def baselines(config: RunConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """``{baseline: {task: {"test": metrics, ...}}}`` on the same splits: TF-IDF + logistic regression
    (sequence tasks) and a word-tag lexicon (NER), both tuned on validation (``validation``, ``params``
    beside ``test``); copying the input and the majority target (generation tasks)."""
    if config.data.get("name") != "nlp_demo":
        return {}
    from nlp import corpora, gen_corpora
    from nlp.baselines import copy_and_majority, ner_lexicon, tfidf_logreg
    from nlp.demo import GENERATION_TASKS
    from nlp.encoder import load_tokenizer

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task in config.tasks:
        if task in GENERATION_TASKS:
            root, tokenizer = gen_corpora.prepare(config.data.get("cache")), load_tokenizer(config.data["tokenizer"])
            for name, metrics in copy_and_majority(root, task, tokenizer).items():
                out.setdefault(name, {})[task] = {"test": metrics}
        else:
            root = corpora.prepare(config.data.get("cache"))
            out.setdefault("baseline", {})[task] = ner_lexicon(root) if task == "ner" else tfidf_logreg(root, task)
    return out


def record(run_dir: str | Path, tasks: list[str], tuned: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The baselines' test scores of ``tasks`` into the run's results.json and report."""
    scores = {name: {t: r["test"] for t, r in per_task.items() if t in tasks} for name, per_task in tuned.items()}
    record_baselines(run_dir, {name: per_task for name, per_task in scores.items() if per_task})


def table(joint: dict[str, Any], single: dict[str, Any], base: dict[str, dict[str, Any]]) -> str:
    columns = {"joint": joint, "single": single, **base}
    lines = [f"{'task':<14}{'metric':<18}" + "".join(f"{name:>10}" for name in columns)]
    for task, metrics in joint.items():
        for metric in metrics:
            if metric == "loss":
                continue
            values = [column.get(task, {}).get(metric) for column in columns.values()]
            cells = [format(v, ">10.4f") if v is not None else format("-", ">10") for v in values]
            lines.append(f"{task:<14}{metric:<18}{''.join(cells)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"default: {DEFAULT_CONFIG.name} ({GENERATION_CONFIG.name} with --generation)")
    p.add_argument("--generation", action="store_true", help="the text-to-text demo (decoders on the encoder)")
    p.add_argument("--tasks", help="comma-separated subset of the config's tasks")
    p.add_argument("--encoder", help="AutoModel name or directory (also used as the tokenizer)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--output-dir")
    p.add_argument("--single-task", action="store_true", help="also train each task alone with the same steps")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines (TF-IDF, lexicon, copy, majority)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = p.parse_args(argv)

    overrides = list(args.set)
    for flag, key in (
        (args.device, "train.device"),
        (args.max_steps, "train.max_steps"),
        (args.output_dir, "output_dir"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.encoder:
        overrides += [f"model.backbone.model={args.encoder}", f"data.tokenizer={args.encoder}"]
    try:
        start = time.perf_counter()
        default = GENERATION_CONFIG if args.generation else DEFAULT_CONFIG
        experiment = Experiment.from_file(args.config or str(default), overrides)
        if args.tasks:
            tasks = args.tasks.split(",")
            if len(tasks) != 1:
                raise JointTrainError(f"--tasks takes one task of {list(experiment.config.tasks)}")
            experiment = experiment.single_task(tasks[0], experiment.config.output_dir)
        config = experiment.config
        report = run(config)
        summary: dict[str, Any] = {"joint": report["tasks"], "joint_time_s": report["wall_time_s"]}
        print(format_results(report["tasks"], f"joint model, {report['split']} split ({report['wall_time_s']:.0f} s)"))
        singles: dict[str, str] = {}
        if args.single_task and len(config.tasks) > 1:
            summary["single"] = {}
            for task in config.tasks:
                single = experiment.single_task(task).config
                result = run(single)
                singles[task] = single.output_dir
                summary["single"][task] = result["tasks"][task]
                summary[f"single_time_s/{task}"] = result["wall_time_s"]
        summary["baselines"] = {} if args.no_baselines else baselines(config)
        if summary["baselines"]:  # every run's report shows them beside its own metrics
            record(config.output_dir, list(config.tasks), summary["baselines"])
            for task, out in singles.items():
                record(out, [task], summary["baselines"])
        model = JointModel.from_pretrained(Path(config.output_dir) / "best")
        from nlp.predict import predict_records

        summary["examples"] = predict_records(model, [{"text": t} for t in examples(config)])
        summary["total_time_s"] = time.perf_counter() - start
    except JointTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tested = {name: {t: r["test"] for t, r in per_task.items()} for name, per_task in summary["baselines"].items()}
    print(table(summary["joint"], summary.get("single", {}), tested))
    for example in summary["examples"]:
        shown = {k: v.get("label", v.get("text", v)) if isinstance(v, dict) else v for k, v in example.items()}
        print(json.dumps(shown, ensure_ascii=False))
    print(f"total time {summary['total_time_s']:.0f} s; model: {config.output_dir}/best")
    atomic_write_json(Path(config.output_dir) / "summary.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
