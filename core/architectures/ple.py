"""Progressive Layered Extraction (PLE) and its one-level form, Customized Gate Control (CGC).

Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020.

Each level has shared experts and task-specific experts. Task t's gate mixes its own experts
with the shared ones. At every level but the last, a shared gate mixes *all* experts (every
task's and the shared ones) into the input of the next level's shared experts: without it the
levels above would never see what the task experts extracted. The first level reads the
backbone's feature vector.

Parameters below the last level reach every task through the shared gate, so they are shared,
except the next-to-last level's task gates (each feeds only its task's experts above); the last
level's task experts and gates are task-specific. No single tensor separates the two
(task experts read the same input as the shared experts), so only the ``params`` space is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Architecture, vector_features
from .experts import ExpertBank, gate_statistics, to_floats
from .registry import ARCHITECTURES


def mix(gate_logits: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
    """(softmax-weighted sum of [B, n, D] experts, the [B, n] weights)."""
    weights = torch.softmax(gate_logits.float(), -1)
    return torch.einsum("bn,bnd->bd", weights.to(experts.dtype), experts), weights


class Level(nn.Module):
    """One extraction level: shared experts, experts and a gate per task, and (not last) a shared gate.

    ``expert_tasks`` own experts here; ``gate_tasks`` own a gate (a task's gate output feeds only
    that task's experts at the next level, so tasks absent from the model need none).
    """

    def __init__(
        self,
        expert_tasks: Sequence[str],
        gate_tasks: Sequence[str],
        dim: int,
        n_shared: int,
        n_task: int,
        hidden: int,
        dropout: float,
        last: bool,
    ) -> None:
        super().__init__()
        self.expert_tasks = list(expert_tasks)
        self.shared = ExpertBank(n_shared, dim, hidden, dim, dropout)
        self.task_experts = nn.ModuleDict({t: ExpertBank(n_task, dim, hidden, dim, dropout) for t in expert_tasks})
        self.task_gates = nn.ModuleDict({t: nn.Linear(dim, n_task + n_shared) for t in gate_tasks})
        self.shared_gate = None if last else nn.Linear(dim, len(self.expert_tasks) * n_task + n_shared)

    def forward(
        self, task_in: dict[str, Tensor], shared_in: Tensor, tasks: Sequence[str]
    ) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]:
        """(outputs of ``tasks``' gates, the shared output or None at the last level, their gate weights)."""
        shared = self.shared(shared_in)
        needed = self.expert_tasks if self.shared_gate is not None else list(tasks)
        own = {t: self.task_experts[t](task_in[t]) for t in needed}
        out, weights = {}, {}
        for t in tasks:
            out[t], weights[t] = mix(self.task_gates[t](task_in[t]), torch.cat([own[t], shared], 1))
        shared_out = None
        if self.shared_gate is not None:
            experts = torch.cat([*(own[t] for t in self.expert_tasks), shared], 1)
            shared_out, _ = mix(self.shared_gate(shared_in), experts)
        return out, shared_out, weights


@ARCHITECTURES.register("ple")
class PLE(Architecture):
    """``num_levels`` extraction levels of shared + task experts on the backbone features.

    Args:
        num_levels: extraction levels (1 = CGC).
        n_shared: shared experts per level.
        n_task: experts per task per level.
        expert_hidden: hidden width of each expert (default: the backbone's ``out_dim``).
        dropout: dropout inside the experts.
        structure_tasks: the tasks the lower levels were built for; set when a subset of a saved
            model is loaded (the shared gates below the last level mix every task's experts).
    """

    shared_representation = False

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        num_levels: int = 2,
        n_shared: int = 2,
        n_task: int = 1,
        expert_hidden: int | None = None,
        dropout: float = 0.0,
        structure_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__(tasks)
        name = self.spec_name()
        if num_levels < 1 or n_shared < 1 or n_task < 1:
            raise ConfigError(
                f"{name}: num_levels, n_shared and n_task must be >= 1, got {num_levels}, {n_shared}, {n_task}"
            )
        self.structure_tasks = list(structure_tasks or tasks)
        for t in self.tasks:
            self.check_task(t, self.structure_tasks, f"{name} (structure_tasks)")
        dim = int(backbone.out_dim)
        self.num_levels, self.n_shared, self.n_task = num_levels, n_shared, n_task
        self.expert_hidden, self.dropout = expert_hidden or dim, dropout
        # below the last two levels everything reaches every task (through the shared gates); the
        # next-to-last level's task gates feed only the last level's experts of their task
        self.levels = nn.ModuleList(
            Level(
                self.tasks if i == num_levels - 1 else self.structure_tasks,
                self.tasks if i >= num_levels - 2 else self.structure_tasks,
                dim,
                n_shared,
                n_task,
                self.expert_hidden,
                dropout,
                i == num_levels - 1,
            )
            for i in range(num_levels)
        )
        self._stats: dict[str, Tensor] = {}

    @classmethod
    def spec_name(cls) -> str:
        return "ple"

    def encode(self, backbone: nn.Module, inputs: Any) -> Tensor:
        return vector_features(backbone(inputs), self.spec_name())

    def decode(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Any]:
        shared = features
        task_in = dict.fromkeys(self.structure_tasks, features)
        for i, level in enumerate(self.levels):
            asked = list(tasks) if i >= self.num_levels - 2 else self.structure_tasks
            task_in, next_shared, weights = level(task_in, shared, asked)
            shared = next_shared if next_shared is not None else shared
        for t in tasks:
            self._stats.update(gate_statistics(weights[t], t))
        return {t: task_in[t] for t in tasks}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        last = self.levels[-1]
        params = [*last.task_experts[task].parameters(), *last.task_gates[task].parameters()]
        if self.num_levels > 1:
            params += self.levels[-2].task_gates[task].parameters()
        return params

    def diagnostics(self) -> dict[str, float]:
        return to_floats(self._stats)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.spec_name()}
        if self.spec_name() == "ple":
            spec["num_levels"] = self.num_levels
        spec.update(
            n_shared=self.n_shared,
            n_task=self.n_task,
            expert_hidden=self.expert_hidden,
            dropout=self.dropout,
            structure_tasks=self.structure_tasks,
        )
        return spec


@ARCHITECTURES.register("cgc")
class CGC(PLE):
    """Customized Gate Control: one PLE level (shared + task experts, one gate per task).

    Args: as :class:`PLE`, without ``num_levels``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        n_shared: int = 2,
        n_task: int = 1,
        expert_hidden: int | None = None,
        dropout: float = 0.0,
        structure_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__(backbone, tasks, 1, n_shared, n_task, expert_hidden, dropout, structure_tasks)

    @classmethod
    def spec_name(cls) -> str:
        return "cgc"
