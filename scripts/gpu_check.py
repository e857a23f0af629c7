#!/usr/bin/env python
"""One prepared GPU check: every domain demo briefly on CUDA, the balancing benches, 2-GPU DDP.

Runs in under 8 minutes on one GPU and writes ONE JSON: per check its throughput (training
samples/s, from the metrics log's clock at the last training step, so the final evaluation is
not counted), peak GPU memory, metric values, wall time, and the error where one failed (the
other checks still run).

    python scripts/gpu_check.py --out gpu_check          # on a CUDA machine: gpu_check/gpu_check.json
    python scripts/gpu_check.py --dry-run --out /tmp/gc  # CPU, tiny budgets: keeps the script runnable

CUDA runs use bf16 autocast and, for the conv backbone, channels_last with pinned-memory loader
workers. ``--dry-run`` runs the same code on the CPU with a few steps on shrunken data (tests/
test_gpu_check.py executes it).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on shared CPUs

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.config import load_config
from core.experiments.run import train
from core.rundir.directory import RunDir

SCRIPTS = Path(__file__).resolve().parent
CONFIGS = SCRIPTS / "configs"

#: per domain: config file, overrides on CUDA, extra overrides for --dry-run (tiny data, CPU)
DOMAINS: dict[str, tuple[str, list[str], list[str]]] = {
    "vision": (
        "vision_digits.yaml",
        ["train.max_steps=200", "train.channels_last=true", "loading.pin_memory=true", "loading.num_workers=4"],
        [
            "train.max_steps=2",
            "data.train_scenes=32",
            "data.val_scenes=8",
            "data.test_scenes=8",
            "loading.batch_size=4",
        ],
    ),
    "nlp": (
        "nlp_demo.yaml",
        ["train.max_steps=150", "loading.pin_memory=true"],
        ["train.max_steps=2", "data.max_train_samples=64", "data.max_length=16", "loading.batch_size=4"],
    ),
    "medical": ("medical_thyroid.yaml", ["train.max_steps=400", "loading.pin_memory=true"], ["train.max_steps=2"]),
}


def last_train_record(run: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("split") == "train"][-1]


def domain_check(name: str, out: Path, device: str, dry_run: bool) -> dict[str, Any]:
    file, on_cuda, tiny = DOMAINS[name]
    common = [
        f"output_dir={json.dumps(str(out / name))}",
        f"train.device={device}",
        "train.eval_every=0",  # one evaluation, after the timed steps
        "train.progress=false",
        "report.enabled=false",
        "train.amp=" + ('"off"' if dry_run else "bf16"),  # quoted: YAML reads a bare off as False
    ]
    config = load_config(CONFIGS / file, [*common, *(tiny if dry_run else on_cuda)])
    config.finetune = None  # the check times the main training only
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    summary = train(config)
    record = last_train_record(out / name)
    samples = record["step"] * config.loading.batch_size * config.train.grad_accum
    return {
        "steps": record["step"],
        "samples_per_s": samples / record["time"],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "metrics": RunDir(out / name).summary()["tasks"],
        "status": summary["status"],
    }


def script_check(args: list[str], json_out: Path, timeout_s: float) -> dict[str, Any]:
    """A bench script in its own process (its own CUDA context and peak memory)."""
    subprocess.run([sys.executable, *args, "--json", str(json_out)], check=True, timeout=timeout_s)
    return json.loads(json_out.read_text())


def ddp_check(out: Path) -> dict[str, Any]:
    """The vision demo on 2 GPUs through torchrun (loss-space ``ew``: DistributedDataParallel)."""
    run = out / "vision_ddp"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(SCRIPTS / "train_vision.py"),
        *("--device", "cuda", "--output-dir", str(run)),
        *("--set", "train.max_steps=200", "--set", "train.eval_every=0", "--set", "report.enabled=false"),
    ]
    subprocess.run(command, check=True, timeout=240)
    record = last_train_record(run)
    batch = load_config(CONFIGS / "vision_digits.yaml").loading.batch_size
    return {
        "steps": record["step"],
        "samples_per_s": record["step"] * batch * 2 / record["time"],
        "metrics": RunDir(run).summary()["tasks"],
    }


def timed(checks: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    start = time.perf_counter()
    try:
        checks[name] = fn()
    except Exception as e:  # one failing check must not hide the others' numbers
        checks[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
    checks[name]["wall_s"] = time.perf_counter() - start
    print(f"[gpu_check] {name}: {json.dumps(checks[name], default=str)[:400]}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check", help="folder for the runs and gpu_check.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny budgets (what the test runs)")
    args = p.parse_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    checks: dict[str, Any] = {}
    for name in DOMAINS:
        timed(checks, name, lambda name=name: domain_check(name, out, device, args.dry_run))
    bench = ["--device", device, "--tasks", "3", "--rounds", "1" if args.dry_run else "5"]
    if args.dry_run:
        bench += ["--runs", "ew", "upgrad/rep", "--backbone", "resnet10t", "--batch", "4", "--size", "32"]
    timed(checks, "balancing_bench", lambda: script_check([str(SCRIPTS / "bench.py"), *bench], out / "bench.json", 300))
    step = ["--device", device, "--amp", "off" if args.dry_run else "bf16"]
    step += ["--steps", "2", "--repeats", "1", "--batch", "16", "--hidden", "32"] if args.dry_run else []
    timed(checks, "bench_step", lambda: script_check([str(SCRIPTS / "bench_step.py"), *step], out / "step.json", 300))
    if not args.dry_run and torch.cuda.device_count() >= 2:
        timed(checks, "vision_ddp_2gpu", lambda: ddp_check(out))
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "checks": checks,
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"[gpu_check] wrote {out / 'gpu_check.json'}")
    return 1 if any("error" in c for c in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
