"""What a choice costs to serve: parameters and per-example latency of the models one answer needs.

Serving every task for one example takes one joint model, or one model per group, or K single-task
models: the latency of a row is the sum over its models of each one's median latency on a single
example (batch of 1, the serving case; measured on this machine, after warm-up), its parameters
the sum of theirs. Training cost (time, peak memory) comes from the runs themselves (``compare``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import Loading, Source, eval_loader, move
from ..model import JointModel
from ..rundir.directory import RunDir


@torch.inference_mode()
def latency_ms(
    run_dir: Path,
    sources: Sequence[Source],
    loading: Loading,
    device: torch.device,
    examples: int = 32,
    warmup: int = 3,
) -> float:
    """Median wall time (ms) of the run's best model on one test example, every head decoded (a
    served request asks for all of the model's tasks)."""
    model = JointModel.from_pretrained(RunDir(run_dir).model("best"), map_location=device).eval()
    source = next(s for s in sources if set(s.tasks) & set(model.tasks))
    tasks = list(model.tasks)
    single = dataclasses.replace(loading, eval_batch_size=1, num_workers=0)
    batches = [move(b, device) for _, b in zip(range(examples + warmup), eval_loader(source, single), strict=False)]
    times = []
    for k, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.decode(model.encode(batch[source.input_key]), tasks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the kernels must finish before the clock stops
        if k >= warmup:
            times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def serving_cost(
    run_dirs: Sequence[Path], sources: Sequence[Source], loading: Loading, device: torch.device, examples: int = 32
) -> dict[str, Any]:
    """Models, parameters and per-example latency of serving every task with these runs' models."""
    from .compare import parameter_count

    latencies = [latency_ms(d, sources, loading, device, examples) for d in run_dirs]
    return {
        "models": len(run_dirs),
        "parameters": sum(parameter_count(d) for d in run_dirs),
        "latency_ms": sum(latencies),
        "latency_ms_per_model": latencies,
    }
