"""Time one training step of every gradient-space balancing method against equal weighting.

Workload (default): a timm resnet18 backbone (``num_classes=0``, pooled 512-d features, random
init), 3 classification heads, batch 32 of 64x64 images, on the CPU. Every method runs in both
spaces it supports, plus torchjd's own ``mtl_backward`` + ``jac_to_grad(UPGrad())`` on the same
model and batch. A step is: zero_grad, forward, the method's backward, SGD step. Prints a table
and, with ``--json PATH``, writes ``{"methods": {name: {...}}, "torchjd_upgrad_ratio_vs_ew": ...}``.

    python scripts/bench.py --json bench.json            # ~3 min on 2 CPU cores
    python scripts/bench.py --device cuda --repeats 20   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from core.balancing import BALANCERS, Balancer, BalancerSetup, StepContext, build
from core.distributed import DistEnv

METHODS = [
    *("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl"),
    *("upgrad", "graddrop", "gradvac", "gradnorm", "db_mtl"),
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

    backbone = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    return Model(backbone, backbone.num_features, tasks, args.classes)


def step_fn(model: Model, method: str, space: str | None, batch: dict[str, Tensor], env: DistEnv) -> Callable[[], None]:
    tasks = list(model.heads)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    if method == "torchjd_upgrad":
        from torchjd.aggregation import UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = UPGrad()
        shared = list(model.shared_parameters())

        def torchjd_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            z = model.backbone(batch["x"])
            losses = [nn.functional.cross_entropy(model.heads[t](z), batch[t]) for t in tasks]
            mtl_backward(losses, features=z)
            jac_to_grad(shared, aggregator)
            optimizer.step()

        return torchjd_step

    balancer: Balancer = build(method, **({"space": space} if space else {}))
    balancer.setup(
        BalancerSetup(tasks=tasks, task_weights=dict.fromkeys(tasks, 1.0), dataset_sizes={}, steps_per_epoch=1)
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


def time_step(step: Callable[[], None], warmup: int, repeats: int, device: torch.device) -> tuple[float, float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # process-wide high-water mark (monotone over the run)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=METHODS, help=f"subset of {METHODS}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = torch.device(args.device)
    torch.manual_seed(0)
    tasks = [f"task{i}" for i in range(args.tasks)]
    model = make_model(args, tasks).to(device)
    batch = {"x": torch.randn(args.batch, 3, args.size, args.size, device=device)}
    batch.update({t: torch.randint(0, args.classes, (args.batch,), device=device) for t in tasks})
    env = DistEnv(device=device)

    runs: list[tuple[str, str | None]] = [("ew", None)]
    for method in args.methods:
        spaces: tuple[str, ...] = BALANCERS.get(method).spaces  # type: ignore[attr-defined]
        runs += [(method, space) for space in spaces]
    runs.append(("torchjd_upgrad", None))

    results: dict[str, dict[str, Any]] = {}
    print(f"{'method':<22}{'space':<8}{'median step (s)':>16}{'x ew':>8}{'peak MiB':>10}")
    for method, space in runs:
        seconds, peak = time_step(step_fn(model, method, space, batch, env), args.warmup, args.repeats, device)
        key = method if space is None else f"{method}/{space}"
        ew = results["ew"]["median_step_s"] if results else seconds
        results[key] = {
            "space": space or ("loss" if method == "ew" else "torchjd"),
            "median_step_s": seconds,
            "ratio_vs_ew": seconds / ew,
            "peak_mem_mib": peak,
        }
        print(f"{method:<22}{space or '-':<8}{seconds:>16.4f}{seconds / ew:>8.2f}{peak:>10.0f}")
    torchjd = results.pop("torchjd_upgrad")
    summary = {
        "workload": vars(args) | {"torch_threads": torch.get_num_threads()},
        "methods": results,
        "torchjd_upgrad_median_step_s": torchjd["median_step_s"],
        "torchjd_upgrad_ratio_vs_ew": torchjd["ratio_vs_ew"],
        "peak_mem_note": "CUDA: max allocated per method; CPU: process max RSS so far (monotone)",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
