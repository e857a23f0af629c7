"""Time one training step of gradient-space balancing methods against equal weighting.

Workload (default): a timm resnet18 backbone (``num_classes=0``, pooled 512-d features, random
init), K classification heads, batch 32 of 64x64 images, on the CPU, for each K in ``--tasks``.
A step is: zero_grad, forward, the method's backward, SGD step. Runs are *interleaved*: every
round times one step of every run in turn, so drift on a shared machine hits all runs alike; the
median over rounds and its ratio to ``ew`` (same K) are reported. torchjd's two engines run on the
same model and batch: ``torchjd_autojac`` (``mtl_backward`` + ``jac_to_grad(UPGrad())``) and
``torchjd_autogram`` (``Engine.compute_gramian`` + ``UPGradWeighting`` + one weighted backward).
``k_backwards`` is the reference for exact task gradients: K plain backwards on the retained
graph, no method. Each run has its own identical copy of the model (module hooks stay put).

Peak memory: on CUDA, ``max_memory_allocated`` around each run's steps; on the CPU, each run's
peak RSS in a fresh process (``--memory``; a few seconds per run), since RSS is process-wide.

    python scripts/bench.py --json bench.json                       # ~3 min on 2 CPU cores
    python scripts/bench.py --tasks 3 8 --rounds 5 --memory --json bench.json
    python scripts/bench.py --runs ew upgrad/params/loop mgda/rep   # name[/space[/engine]]
    python scripts/bench.py --device cuda --rounds 20

JSON: ``{"workload": ..., "results": {"K=3": {run: {median_step_s, ratio_vs_ew, spread,
peak_mem_mib}}}, "noise": ...}``; ``spread`` is (max - min) / median over the rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from core.balancing import BalancerSetup, StepContext, build
from core.distributed import DistEnv

RUNS = [
    "ew",
    "upgrad/rep",
    "upgrad/params/gramian",
    "upgrad/params/loop",
    "mgda/params/gramian",
    "graddrop/params/loop",
    "torchjd_autojac",
    "torchjd_autogram",
    "k_backwards",
]


class Model(nn.Module):
    """Backbone + one linear head per task, with the ``shared_parameters`` the engine reads."""

    def __init__(self, backbone: nn.Module, dim: int, tasks: list[str], classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({t: nn.Linear(dim, classes) for t in tasks})

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()


def make_model(args: argparse.Namespace, tasks: list[str]) -> Model:
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    return Model(backbone, backbone.num_features, tasks, args.classes)


def step_fn(model: Model, run: str, batch: dict[str, Tensor], env: DistEnv) -> Callable[[], None]:
    tasks = list(model.heads)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    if run == "torchjd_autojac":
        from torchjd.aggregation import UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator, shared = UPGrad(), list(model.shared_parameters())

        def autojac_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            z = model.backbone(batch["x"])
            losses = [nn.functional.cross_entropy(model.heads[t](z), batch[t]) for t in tasks]
            mtl_backward(losses, features=z)
            jac_to_grad(shared, aggregator)
            optimizer.step()

        return autojac_step
    if run == "k_backwards":  # the reference: K exact task gradients through autograd, no method at all

        def k_backwards_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            z = model.backbone(batch["x"])
            losses = [nn.functional.cross_entropy(model.heads[t](z), batch[t]) for t in tasks]
            for i, loss in enumerate(losses):
                torch.autograd.grad(loss, list(model.parameters()), retain_graph=i < len(losses) - 1, allow_unused=True)
            optimizer.step()

        return k_backwards_step
    if run == "torchjd_autogram":
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        engine, weighting = Engine(model.backbone, batch_dim=None), UPGradWeighting()  # BatchNorm: no batch_dim

        def autogram_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            z = model.backbone(batch["x"])
            losses = torch.stack([nn.functional.cross_entropy(model.heads[t](z), batch[t]) for t in tasks])
            losses.backward(weighting(engine.compute_gramian(losses)))
            optimizer.step()

        return autogram_step

    name, *rest = run.split("/")
    kwargs = dict(zip(("space", "engine"), rest, strict=False))
    balancer = build(name, **kwargs)
    balancer.setup(
        BalancerSetup(
            tasks=tasks, task_weights=dict.fromkeys(tasks, 1.0), dataset_sizes={}, steps_per_epoch=1, model=model
        )
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z = model.backbone(batch["x"])
        losses = {t: nn.functional.cross_entropy(model.heads[t](z), batch[t]) for t in tasks}
        ctx = StepContext(
            step=0,
            backward=lambda total: total.backward(),
            loss_values={t: float(v.detach()) for t, v in losses.items()},
            model=model,
            features={"images": z},
            source_tasks={"images": tasks},
            env=env,
        )
        balancer.backward(losses, ctx)
        optimizer.step()

    return step


def setup_workload(args: argparse.Namespace, k: int) -> tuple[Model, dict[str, Tensor], torch.device]:
    device = torch.device(args.device)
    tasks = [f"task{i}" for i in range(k)]
    model = make_model(args, tasks).to(device)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)}
    batch.update({t: torch.randint(0, args.classes, (args.batch,), generator=g).to(device) for t in tasks})
    return model, batch, device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_k(args: argparse.Namespace, k: int) -> dict[str, dict[str, Any]]:
    model, batch, device = setup_workload(args, k)
    env = DistEnv(device=device)
    # a copy of the model each: engines that hook modules (torchjd's autogram, our layer-wise
    # Gramian) keep their hooks out of the other runs
    steps = {run: step_fn(copy.deepcopy(model), run, batch, env) for run in args.runs}
    times: dict[str, list[float]] = {run: [] for run in args.runs}
    peaks: dict[str, float] = {}
    for run, step in steps.items():  # warm-up, and the CUDA peak of each run on its own
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            sync(device)
            peaks[run] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(args.rounds):  # interleaved: one step of every run per round
        for run, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[run].append(time.perf_counter() - start)
    if device.type == "cpu" and args.memory:
        peaks = {run: cpu_peak(args, k, run) for run in args.runs}
    ew = statistics.median(times["ew"]) if "ew" in times else None
    out = {}
    for run, ts in times.items():
        median = statistics.median(ts)
        out[run] = {
            "median_step_s": median,
            "ratio_vs_ew": median / ew if ew else None,
            "spread": (max(ts) - min(ts)) / median,
            "peak_mem_mib": peaks.get(run),
        }
    return out


def cpu_peak(args: argparse.Namespace, k: int, run: str) -> float:
    """Peak RSS (MiB, Linux ``VmHWM``) of a fresh process that runs ``warmup + 1`` steps of ``run``."""
    cmd = [sys.executable, __file__, "--probe", run, "--tasks", str(k), "--device", "cpu"]
    cmd += ["--backbone", args.backbone, "--batch", str(args.batch), "--size", str(args.size)]
    cmd += ["--classes", str(args.classes), "--threads", str(args.threads), "--warmup", str(args.warmup)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mem_mib"])


def probe(args: argparse.Namespace) -> None:
    model, batch, device = setup_workload(args, args.tasks[0])
    step = step_fn(model, args.probe, batch, DistEnv(device=device))
    for _ in range(args.warmup + 1):
        step()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent process
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mem_mib": hwm_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 8], help="numbers of tasks K")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", nargs="*", default=RUNS, help="name[/space[/engine]] or torchjd_autojac|autogram")
    parser.add_argument("--memory", action="store_true", help="CPU: measure each run's peak RSS in a fresh process")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one run's CPU peak memory
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.probe:
        probe(args)
        return
    if "ew" not in args.runs:
        args.runs = ["ew", *args.runs]
    results: dict[str, Any] = {}
    print(f"{'K':>3}  {'run':<24}{'median step (s)':>16}{'x ew':>7}{'spread':>8}{'peak MiB':>10}")
    for k in args.tasks:
        results[f"K={k}"] = table = bench_k(args, k)
        for run, r in table.items():
            peak = f"{r['peak_mem_mib']:>10.0f}" if r["peak_mem_mib"] is not None else f"{'-':>10}"
            print(f"{k:>3}  {run:<24}{r['median_step_s']:>16.4f}{r['ratio_vs_ew']:>7.2f}{r['spread']:>8.2f}{peak}")
    summary = {
        "workload": vars(args) | {"torch_threads": torch.get_num_threads()},
        "results": results,
        "noise": "spread = (max - min) / median of a run's step times over the interleaved rounds",
        "peak_mem_note": "CUDA: max allocated per run; CPU (--memory): peak RSS of a fresh process per run",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
