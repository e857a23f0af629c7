"""Head-to-head with torchjd on torchjd's own speed benchmark (``tests/profiling/speed_grad_vs_jac_vs_gram.py``).

Its protocol: nine models with its batch sizes (below), random normal inputs and MSE targets,
CPU float32, UPGrad, one warm-up run then 10 timed runs of forward + backward (``zero_grad``
outside the timing). Two settings:

- ``per_sample`` (torchjd's own: instance-wise risk minimisation, one objective per example,
  K = batch size): ``autojac`` = ``backward(losses)`` + ``jac_to_grad(params, UPGrad())``;
  ``autogram`` = ``Engine(model, batch_dim=0).compute_gramian(losses)`` then
  ``losses.backward(UPGradWeighting()(G))``; ``ours`` = ``core.balancing.LoopBalancer("upgrad",
  shared=model, independent_samples=True).backward(losses)`` (the declaration ``batch_dim=0`` makes).
- ``multi_task`` (K = ``--tasks`` linear heads on the model's output, one MSE loss each):
  ``autojac`` = ``mtl_backward(losses, features)`` + ``jac_to_grad(backbone params, UPGrad())``;
  ``autogram`` = ``Engine(backbone, batch_dim=None)`` on the K losses (its heads get the weighted,
  not the plain, sum of their gradients: the same cost); ``ours`` = the same LoopBalancer
  with ``shared=backbone`` (exact gradients, space ``params``; ``ours_batched``: its K task
  backwards as one ``torch.vmap``-ed backward, engine ``batched``); ``ours_rep`` = space
  ``rep`` (gradients w.r.t. the backbone's output, MGDA-UB style: not the same update).

``autograd`` (the plain backward of the summed losses) is timed beside them as the unit. Each
method trains its own copy of the model (same weights), so hooks of one engine never slow another,
and the methods are interleaved round by round. Peak memory: in a fresh subprocess per (model,
setting, method), after the warm-up, the resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) of one step above the RSS before it, with glibc returning freed
tensors to the system (``MALLOC_MMAP_THRESHOLD_``); tracemalloc would miss torch's C++
allocations.

    python scripts/bench_torchjd.py --out bench_torchjd.json                 # the full table (long)
    python scripts/bench_torchjd.py --models cifar10 --runs 1 --warmup 1 --out smoke.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SETTINGS = ("per_sample", "multi_task")


# -- torchjd's nine models, rebuilt from torchvision / torch.nn -----------------------------------


class Transformer(nn.Module):
    """``nn.Transformer`` with its default sizes (d_model 512, 6 + 6 layers), no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Transformer(batch_first=True, dropout=0.0)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.net(src, tgt)


class Mlp(nn.Module):
    """15 -> 16 -> 50 -> 60 -> 70 -> 80 with ReLUs; ``free``: the first matrix is a bare parameter
    of this module (torchjd's ``FreeParam``), else an ``nn.Linear`` without bias (``NoFreeParam``)."""

    def __init__(self, free: bool) -> None:
        super().__init__()
        self.free = free
        self.first: nn.Parameter | nn.Linear = nn.Parameter(torch.randn(15, 16)) if free else nn.Linear(15, 16, False)
        sizes = [16, 50, 60, 70, 80]
        self.rest = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: Tensor) -> Tensor:
        x = x @ self.first if self.free else self.first(x)  # type: ignore[operator]
        for layer in self.rest:
            x = layer(torch.relu(x))
        return x


class Cifar10(nn.Module):
    """The small CIFAR-10 CNN of the Jacobian descent paper (arXiv:2406.16232): depthwise convs, 2 FC."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, groups=32),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, groups=64),
            nn.MaxPool2d(3),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Scaled(nn.Module):
    """A torchvision classifier with its output divided by a constant, as torchjd does for some."""

    def __init__(self, net: nn.Module, divisor: float = 1.0) -> None:
        super().__init__()
        self.net, self.divisor = net, divisor

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) / self.divisor


def _torchvision(name: str, divisor: float = 1.0, **kwargs: Any) -> nn.Module:
    import torchvision

    return Scaled(getattr(torchvision.models, name)(**kwargs), divisor)


_instance_norm = partial(nn.InstanceNorm2d, track_running_stats=False, affine=True)
IMAGE = ((3, 224, 224),)


@dataclass(frozen=True)
class Spec:
    build: Callable[[], nn.Module]
    batch_size: int  # torchjd's
    inputs: tuple[tuple[int, ...], ...]  # per-example input shapes


MODELS: dict[str, Spec] = {
    "transformer": Spec(Transformer, 8, ((10, 512), (20, 512))),
    "free_param": Spec(partial(Mlp, free=True), 64, ((15,),)),
    "no_free_param": Spec(partial(Mlp, free=False), 64, ((15,),)),
    "cifar10": Spec(Cifar10, 64, ((3, 32, 32),)),
    "alexnet": Spec(partial(_torchvision, "alexnet"), 8, IMAGE),
    "in_resnet18": Spec(partial(_torchvision, "resnet18", 5.0, norm_layer=_instance_norm), 16, IMAGE),
    "gn_mobilenet_v3_small": Spec(
        partial(_torchvision, "mobilenet_v3_small", norm_layer=partial(nn.GroupNorm, 2, affine=True)), 16, IMAGE
    ),
    "squeezenet": Spec(partial(_torchvision, "squeezenet1_0"), 4, IMAGE),
    "in_mobilenet_v2": Spec(partial(_torchvision, "mobilenet_v2", 10.0, norm_layer=_instance_norm), 2, IMAGE),
}


# -- the problem: a model, its inputs, and the losses of one forward --------------------------------


class Problem(nn.Module):
    """``backbone`` (one of MODELS) and, in the multi-task setting, K linear heads on its output."""

    def __init__(self, spec: Spec, setting: str, tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = spec.build()
        self.inputs = [torch.randn(spec.batch_size, *shape) for shape in spec.inputs]
        with torch.no_grad():
            out = self.backbone(*self.inputs)
        width = out.shape[-1]
        self.heads = nn.ModuleList(nn.Linear(width, 16) for _ in range(tasks if setting == "multi_task" else 0))
        shapes = [out.shape] if setting == "per_sample" else [(*out.shape[:-1], 16)] * tasks
        self.targets = [torch.randn(shape) for shape in shapes]
        self.setting = setting

    def losses(self) -> tuple[Tensor | list[Tensor], Tensor]:
        """Per-sample losses (a vector of B) or the K task losses, and the backbone's output."""
        features = self.backbone(*self.inputs)
        if self.setting == "per_sample":
            return F.mse_loss(features, self.targets[0], reduction="none").flatten(1).mean(1), features
        return [F.mse_loss(head(features), t) for head, t in zip(self.heads, self.targets, strict=True)], features


# -- the methods: each builds one step (forward + backward) on its own copy -------------------------


def autograd_step(problem: Problem) -> Callable[[], None]:
    def step() -> None:
        losses, _ = problem.losses()
        (losses.sum() if isinstance(losses, Tensor) else sum(losses)).backward()  # type: ignore[union-attr]

    return step


def autojac_step(problem: Problem) -> Callable[[], None]:
    from torchjd.aggregation import UPGrad
    from torchjd.autojac import backward, jac_to_grad, mtl_backward

    aggregator = UPGrad()
    shared = list(problem.backbone.parameters())

    def step() -> None:
        losses, features = problem.losses()
        if isinstance(losses, Tensor):
            backward(losses)
        else:
            mtl_backward(losses, features)
        jac_to_grad(shared, aggregator)

    return step


def autogram_step(problem: Problem) -> Callable[[], None]:
    from torchjd.aggregation import UPGradWeighting
    from torchjd.autogram import Engine

    weighting = UPGradWeighting()
    engine = Engine(problem.backbone, batch_dim=0 if problem.setting == "per_sample" else None)

    def step() -> None:
        losses, _ = problem.losses()
        vector = losses if isinstance(losses, Tensor) else torch.stack(losses)
        vector.backward(weighting(engine.compute_gramian(vector)))

    return step


def ours_step(problem: Problem, space: str = "params", engine: str = "auto") -> Callable[[], None]:
    from core.balancing import LoopBalancer

    # torchjd's batch_dim=0 makes the same declaration: none of the nine models mixes samples
    independent = problem.setting == "per_sample"
    balancer = LoopBalancer(
        "upgrad", shared=problem.backbone, space=space, engine=engine, independent_samples=independent
    )

    def step() -> None:
        losses, features = problem.losses()
        balancer.backward(losses, features=features if space == "rep" else None)

    return step


METHODS: dict[str, Callable[[Problem], Callable[[], None]]] = {
    "autograd": autograd_step,
    "autojac": autojac_step,
    "autogram": autogram_step,
    "ours": ours_step,
    "ours_batched": partial(ours_step, engine="batched"),
    "ours_rep": partial(ours_step, space="rep"),
}
#: methods per setting (``rep`` needs several tasks on one representation; ``batched`` vmaps K = B
#: per-sample backwards, which the per-sample path replaces by one)
SETTING_METHODS = {"per_sample": ["autograd", "autojac", "autogram", "ours"], "multi_task": list(METHODS)}


def build(model: str, setting: str, method: str, tasks: int) -> tuple[Problem, Callable[[], None]]:
    problem = Problem(MODELS[model], setting, tasks)
    return problem, METHODS[method](problem)


def run_once(problem: Problem, step: Callable[[], None]) -> float:
    problem.zero_grad(set_to_none=True)  # outside the timing, as torchjd's pre_fn
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_setting(model: str, setting: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Warm-up, then ``--runs`` rounds, each running every method once in turn."""
    methods = [m for m in SETTING_METHODS[setting] if m in args.methods]
    built = {m: build(model, setting, m, args.tasks) for m in methods}
    for problem, step in built.values():
        gc.collect()
        for _ in range(args.warmup):
            run_once(problem, step)
    times: dict[str, list[float]] = {m: [] for m in built}
    for _ in range(args.runs):
        for m, (problem, step) in built.items():
            times[m].append(run_once(problem, step))
    return times


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024  # kB


def peak_memory(model: str, setting: str, method: str, args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: the resident-set peak of one step above the RSS before it.

    Every child imports the same libraries, and runs the warm-up first, so that the code pages and
    thread pools a first call faults in are resident before the measurement; the high-water mark is
    then reset (``/proc/self/clear_refs``) and read back after the step.
    """
    for library in ("core.balancing", "torchjd.autojac", "torchjd.autogram"):  # the same in every child
        importlib.import_module(library)

    problem, step = build(model, setting, method, args.tasks)
    for _ in range(max(args.warmup, 1)):
        run_once(problem, step)
    problem.zero_grad(set_to_none=True)
    gc.collect()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    run_once(problem, step)
    peak = _status_mib("VmHWM")
    return {"base_rss_mib": round(base, 1), "peak_rss_mib": round(peak, 1), "step_peak_mib": round(peak - base, 1)}


def memory_in_subprocess(model: str, setting: str, method: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-of", f"{model}:{setting}:{method}"]
    cmd += ["--warmup", str(args.warmup), "--tasks", str(args.tasks), "--threads", str(args.threads)]
    # a fixed mmap threshold: glibc then returns every freed tensor above 64 KiB to the system, so
    # the warm-up's freed memory is not counted as resident before the measured step
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--runs", type=int, default=10, help="timed rounds (torchjd: 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each method first (torchjd: 1)")
    p.add_argument("--tasks", type=int, default=3, help="K heads in the multi_task setting")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # model:setting:method, in a child process
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.memory_of:
        model, setting, method = args.memory_of.split(":")
        print(json.dumps(peak_memory(model, setting, method, args)))
        return {}

    results = []
    for model in args.models:
        for setting in args.settings:
            times = time_setting(model, setting, args)
            unit = statistics.mean(times["autograd"]) if "autograd" in times else float("nan")
            for method, ts in times.items():
                row: dict[str, Any] = {
                    "model": model,
                    "batch_size": MODELS[model].batch_size,
                    "setting": setting,
                    "method": method,
                    "times_s": [round(t, 6) for t in ts],
                    "mean_s": statistics.mean(ts),
                    "std_s": statistics.stdev(ts) if len(ts) > 1 else 0.0,
                    "x_autograd": statistics.mean(ts) / unit,
                }
                if not args.no_memory:
                    row.update(memory_in_subprocess(model, setting, method, args))
                results.append(row)
                mem = f"  peak +{row['step_peak_mib']:.0f} MiB" if "step_peak_mib" in row else ""
                print(
                    f"{model:22s} {setting:10s} {method:9s} {row['mean_s']:.4f} s "
                    f"(sd {row['std_s']:.4f}, {row['x_autograd']:.2f}x autograd){mem}",
                    flush=True,
                )
    report = {
        "protocol": {
            "source": "torchjd tests/profiling/speed_grad_vs_jac_vs_gram.py",
            "aggregator": "UPGrad",
            "runs": args.runs,
            "warmup": args.warmup,
            "tasks": args.tasks,
            "threads": args.threads,
            "dtype": "float32",
            "device": "cpu",
            "memory": "one step's VmHWM above the RSS before it, after warm-up, in a fresh subprocess",
            "torch": torch.__version__,
        },
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
