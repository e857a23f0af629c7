"""Task samplers: which data sources contribute a batch at each step.

A source is one dataset with the tasks it labels: one shared source in the multi-labelled
regime, one source per task (or per cohort) in the one-dataset-per-task regime. Samplers are
pure functions of (seed, step), so they resume exactly and every DDP rank picks the same
sources at the same step without communicating.
"""

from __future__ import annotations

import math
import zlib
from typing import ClassVar

import numpy as np

from .errors import ConfigError
from .registry import Registry

SAMPLERS: Registry[TaskSampler] = Registry("sampler")


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())


class TaskSampler:
    """Base: ``setup`` with each source's batches per epoch, then ``choose(step)``."""

    #: whether every step draws a batch from every source (gradient balancing needs several tasks a step)
    all_sources: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.sizes: dict[str, int] = {}

    def setup(self, batches_per_source: dict[str, int]) -> None:
        if not batches_per_source:
            raise ConfigError("no training data sources")
        self.sizes = dict(batches_per_source)

    @property
    def sources(self) -> list[str]:
        return list(self.sizes)

    def choose(self, step: int) -> list[str]:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Steps that draw, on average, one epoch's worth of batches from every source."""
        return sum(self.sizes.values())

    def describe(self) -> str:
        return (
            f"{type(self).__name__}: one source per step; 1 epoch = {self.steps_per_epoch()} steps "
            f"(the batches of all sources together)"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


@SAMPLERS.register("all")
class AllSources(TaskSampler):
    """Every source contributes one batch every step (the natural choice for one shared dataset)."""

    all_sources: ClassVar[bool] = True

    def choose(self, step: int) -> list[str]:
        return self.sources

    def steps_per_epoch(self) -> int:
        return max(self.sizes.values())

    def describe(self) -> str:
        return (
            f"all: every source each step; 1 epoch = {self.steps_per_epoch()} steps (one pass over the largest source)"
        )


@SAMPLERS.register("round_robin")
class RoundRobin(TaskSampler):
    """Sources in turn, one per step."""

    def choose(self, step: int) -> list[str]:
        return [self.sources[step % len(self.sources)]]


class _Weighted(TaskSampler):
    def probabilities(self) -> np.ndarray:
        raise NotImplementedError

    def choose(self, step: int) -> list[str]:
        index = step_rng(self.seed, step).choice(len(self.sources), p=self.probabilities())
        return [self.sources[int(index)]]

    def __repr__(self) -> str:
        p = ", ".join(f"{s}={q:.3f}" for s, q in zip(self.sources, self.probabilities(), strict=True))
        return f"{type(self).__name__}(seed={self.seed}, p=[{p}])"


@SAMPLERS.register("temperature")
class Temperature(_Weighted):
    """Source i with probability ∝ min(n_i, cap)^(1/T) (T=1: proportional; T→∞: uniform).

    Args:
        temperature: T >= 1 flattens the size distribution so small tasks are not starved.
        cap: examples cap in batches (0 = none), as in T5's "examples-proportional mixing".
    """

    def __init__(self, seed: int = 0, temperature: float = 2.0, cap: int = 0) -> None:
        super().__init__(seed)
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.cap = temperature, cap

    def probabilities(self) -> np.ndarray:
        n = np.array([min(s, self.cap) if self.cap else s for s in self.sizes.values()], dtype=float)
        w = n ** (1.0 / self.temperature) if math.isfinite(self.temperature) else np.ones_like(n)
        return w / w.sum()


@SAMPLERS.register("proportional")
class Proportional(Temperature):
    """Source i with probability ∝ its number of batches (T=1)."""

    def __init__(self, seed: int = 0, cap: int = 0) -> None:
        super().__init__(seed, temperature=1.0, cap=cap)


@SAMPLERS.register("uniform")
class Uniform(_Weighted):
    """Every source equally likely, whatever its size."""

    def probabilities(self) -> np.ndarray:
        return np.full(len(self.sizes), 1.0 / len(self.sizes))
