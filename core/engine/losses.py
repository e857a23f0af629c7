"""The step's global task losses from each rank's masked (sum, count), in one all-reduce.

A task's value is the mean over every labelled sample of every source and rank; its loss is
scaled so that the ranks' averaged gradient is exactly the gradient of that global mean. Nothing
here reads a value back to the host: a count of 0 (no label anywhere) leaves an exact zero loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import DistEnv, all_reduce_sum


@dataclass
class StepLosses:
    tasks: list[str]  # every task of the step's sources
    losses: dict[str, Tensor]  # to backpropagate: sum * world_size / global count
    values: Tensor  # [len(tasks)] global masked means (0 where no label on any rank), float64
    counts: Tensor  # [len(tasks)] global labelled counts, float64

    @classmethod
    def reduce(cls, sums: dict[str, Tensor], counts: dict[str, Tensor], env: DistEnv) -> StepLosses:
        tasks = list(sums)
        # one (sum, count) row per task: the only collective of the forward (ranks sample the same sources)
        table = torch.stack([torch.stack([sums[t].detach().double(), counts[t].double()]) for t in tasks])
        all_reduce_sum(table, env)
        total, count = table.unbind(1)
        scale = env.world_size / count.clamp_min(1)
        losses = {t: sums[t] * scale[i].to(sums[t].dtype) for i, t in enumerate(tasks)}
        return cls(tasks, losses, total / count.clamp_min(1), count)

    def labelled(self) -> dict[str, Tensor]:
        return {t: self.counts[i] > 0 for i, t in enumerate(self.tasks)}

    def device_values(self) -> dict[str, Tensor]:
        return {t: self.values[i] for i, t in enumerate(self.tasks)}

    def finite(self) -> Tensor:
        return torch.isfinite(self.values).all()

    def on_host(self) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The losses and float values of the tasks labelled on some rank: one host sync.

        Every rank gets the same task set, so balancers run the same collectives."""
        values, counts = torch.stack([self.values, self.counts]).tolist()
        kept = [t for t, n in zip(self.tasks, counts, strict=True) if n > 0]
        return {t: self.losses[t] for t in kept}, {t: values[self.tasks.index(t)] for t in kept}
