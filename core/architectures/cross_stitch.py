"""Cross-stitch networks: one network (column) per task, mixed after every block by learned units.

Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016.
After block b, column t continues from ``sum_s alpha_b[t, s] x_s``: a T x T unit per block (a
1 x T row per column would let a task read the others but never be read). ``init_self`` is the
diagonal of the initial units, the rest of each row sharing ``1 - init_self`` (the paper's 0.9 /
0.1 for two tasks); ``init_self = 1`` starts as independent networks.

Every column reaches every task through the units, so all of it is shared; only the heads are
task-specific and there is no single shared tensor (``params`` space only). The backbone's stem
(e.g. an embedding table) stays shared.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Architecture, require_blocks
from .registry import ARCHITECTURES


@ARCHITECTURES.register("cross_stitch")
class CrossStitch(Architecture):
    """T copies of the backbone's blocks with a T x T cross-stitch unit after each block.

    Args:
        init_self: initial weight of a column on itself (diagonal of every unit).
        structure_tasks: the tasks that own a column; set when a subset of a saved model is
            loaded (every column feeds every task, so none is dropped).
    """

    shared_representation = False

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        init_self: float = 0.9,
        structure_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__(tasks)
        blocks = require_blocks(backbone, "cross_stitch")
        self.structure_tasks = list(structure_tasks or tasks)
        for t in self.tasks:
            self.check_task(t, self.structure_tasks, "cross_stitch (structure_tasks)")
        if not 0.0 <= init_self <= 1.0:
            raise ConfigError(f"cross_stitch: init_self must be in [0, 1], got {init_self}")
        n, depth = len(self.structure_tasks), blocks.num_blocks()
        self.init_self = float(init_self)
        self.columns = nn.ModuleDict(
            {t: nn.ModuleList(copy.deepcopy(blocks.block(b)) for b in range(depth)) for t in self.structure_tasks}
        )
        off = (1.0 - init_self) / (n - 1) if n > 1 else 0.0
        unit = torch.full((n, n), off) + torch.eye(n) * (init_self - off)
        self.units = nn.Parameter(unit.expand(depth, n, n).clone())  # [block, to, from]
        blocks.drop_blocks(0)
        self._finish = blocks.finish

    def no_weight_decay(self) -> set[str]:
        return {"units"}  # mixing weights start at the identity; decay would pull them to 0

    def encode(self, backbone: nn.Module, inputs: Any) -> Any:
        return backbone.stem(inputs)

    def decode(self, features: Any, tasks: Sequence[str]) -> dict[str, Any]:
        if not isinstance(features, Tensor):
            raise ConfigError("cross_stitch mixes tensors; this backbone's block state is not a tensor")
        states = [features] * len(self.structure_tasks)
        for b in range(self.units.shape[0]):
            outs = torch.stack([self.columns[t][b](x) for t, x in zip(self.structure_tasks, states, strict=True)])
            mixed = torch.einsum("ts,s...->t...", self.units[b].to(outs.dtype), outs)
            states = list(mixed.unbind(0))
        return {t: self._finish(states[self.structure_tasks.index(t)]) for t in tasks}

    def spec(self) -> dict[str, Any]:
        return {"name": "cross_stitch", "init_self": self.init_self, "structure_tasks": self.structure_tasks}
