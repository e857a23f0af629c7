"""Process-group setup for ``torchrun`` and the few collectives the trainer needs.

Gradients are averaged by one flat all-reduce after backward rather than by wrapping the model
in ``DistributedDataParallel``: a step may run the backbone several times (one per source) and
only some heads, and gradient-space balancing needs the per-task gradients before any sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a device that is not there is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but no CUDA GPU is available; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return device


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = resolve_device(device)
    if world_size <= 1:
        return DistEnv(device=target)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=target)


def all_reduce_sum(tensor: Tensor, env: DistEnv) -> Tensor:
    if env.enabled:
        dist.all_reduce(tensor)
    return tensor


def average_gradients(params: Iterable[nn.Parameter], env: DistEnv) -> None:
    """Average gradients over ranks in one flat all-reduce.

    A parameter without a gradient on one rank (its task had no labelled sample there) joins as
    zeros; one without a gradient on every rank keeps ``grad=None`` so the optimizer skips it,
    exactly as a single process would.
    """
    if not env.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=env.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    dist.all_reduce(present)
    flat /= env.world_size
    offset = 0
    for p, seen in zip(params, present.tolist(), strict=True):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype) if seen else None
        offset += n


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on at least one (one 1-element all-reduce)."""
    if not env.enabled:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)  # host sync: callers do this only every few steps


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def connected_zero(output: Any) -> Tensor:
    """A scalar 0 whose graph reaches every floating tensor of ``output`` (a head output tree).

    A rank whose micro-batch holds no labelled sample of a task backpropagates this instead of
    skipping the task, so every rank runs the same backward passes and collectives (gradient
    balancers' all-reduces, DDP's bucket hooks) and the gradients it adds are exactly zero.
    ``nan_to_num`` keeps an Inf/NaN output from turning the zero into NaN.
    """
    if isinstance(output, Tensor):
        if output.is_floating_point() and output.requires_grad:
            return torch.nan_to_num(output.float(), 0.0, 0.0, 0.0).sum() * 0.0
        return torch.zeros((), device=output.device)
    parts = [connected_zero(v) for v in (output.values() if isinstance(output, dict) else output)]
    if not parts:
        raise TypeError(f"cannot build a zero loss from a head output of type {type(output).__name__}")
    return torch.stack(parts).sum()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
