"""The step's task losses: each task's masked mean over every labelled sample of the step.

A step is ``grad_accum`` micro-batches on each of R ranks. Its labelled counts are read from the
CPU batches before they move (no device sync) and summed over ranks once; each micro-batch then
backpropagates its share ``sum * R / count`` of every labelled task's loss, so that the shares of
all micro-batches, their gradients averaged over ranks, give exactly the gradient of the global
masked mean — whatever the split of the labels over micro-batches and ranks. A task with no label
anywhere in the step has no loss at all: every rank knows it before the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import DistEnv, all_reduce_sum


@dataclass(frozen=True)
class StepCounts:
    counts: dict[str, int]  # labelled entries per task over the whole step (every micro-batch, every rank)
    world_size: int

    @classmethod
    def gather(cls, tasks: Sequence[str], micro_batches: Sequence[dict[str, int]], env: DistEnv) -> StepCounts:
        """Sum each micro-batch's CPU counts; under DDP one all-reduce (host sync: DDP only)."""
        counts = [sum(c.get(t, 0) for c in micro_batches) for t in tasks]
        if env.enabled:
            table = torch.tensor(counts, dtype=torch.float64, device=env.device)
            all_reduce_sum(table, env)
            counts = [int(n) for n in table.tolist()]
        return cls(dict(zip(tasks, counts, strict=True)), env.world_size)

    @property
    def labelled(self) -> list[str]:
        """The tasks that train this step, in the same order on every rank."""
        return [t for t, n in self.counts.items() if n > 0]

    def losses(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """A micro-batch's share of each labelled task's step loss, from its masked loss sums."""
        return {t: sums[t] * (self.world_size / self.counts[t]) for t in self.labelled if t in sums}

    def values(self, sums: dict[str, Tensor], env: DistEnv) -> Tensor:
        """The step's loss of each labelled task (its global masked mean), in :attr:`labelled`'s order,
        on the device: one all-reduce of the step's detached loss sums, nothing read back."""
        tasks = self.labelled
        table = torch.stack([sums[t].detach().double() for t in tasks])
        all_reduce_sum(table, env)
        return table / torch.tensor([self.counts[t] for t in tasks], dtype=torch.float64, device=table.device)
