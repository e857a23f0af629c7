"""PBI, penalty-based boundary intersection (Zhang & Li, "MOEA/D: A Multiobjective Evolutionary
Algorithm Based on Decomposition", IEEE TEVC 2007, doi:10.1109/TEVC.2007.892759)."""

from __future__ import annotations

import math

from torch import Tensor

from .base import BalancerSetup, LossBalancer, StepContext
from .method import non_negative
from .preference import TaskVector, per_task, preference

#: under the square root of d2: its gradient stays finite on the preference line (as torchjd 0.18)
_EPS = 1e-12


class PBI(LossBalancer):
    """The loss vector's distance along a preference direction plus ``theta`` times its distance
    from it: with ``f = L - z`` and ``w^ = w / |w|``,

    ``d1 = f . w^``, ``d2 = |f - d1 w^|``, objective ``d1 + theta d2``,

    so training moves towards the ideal point ``z`` along the chosen trade-off ``w``. Backpropagated
    through its linearisation: task k's weight is ``w^_k + theta (f - d1 w^)_k / d2``, from the
    detached, rank-averaged loss values (exact under DDP). A step without some task uses the
    preference and reference of the tasks present. The weights have norm about ``sqrt(1 + theta^2)``
    rather than summing to K: scale the learning rate accordingly.

    Args:
        theta: penalty on the distance from the preference line, >= 0 (paper: 5).
        preference: ``w``, >= 0: one value per task in config order, or ``{task: value}``; all 1
            when omitted.
        reference: the ideal point ``z`` (a lower bound of the losses): per task as ``preference``;
            0 when omitted.
    """

    def __init__(
        self, theta: float = 5.0, preference: TaskVector | None = None, reference: TaskVector | None = None
    ) -> None:
        super().__init__()
        self.theta = non_negative("PBI", "theta", theta)
        self.preference, self.reference = preference, reference
        self.w: dict[str, float] = {}
        self.z: dict[str, float] = {}

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        self.w = preference("PBI", self.preference, list(setup.tasks))
        self.z = per_task("PBI", "reference", self.reference, list(setup.tasks), 0.0)

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        tasks = list(losses)
        norm = math.sqrt(sum(self.w[t] ** 2 for t in tasks))
        if norm == 0:  # the tasks present have no preference: only the distance to the ideal point counts
            direction = dict.fromkeys(tasks, 0.0)
        else:
            direction = {t: self.w[t] / norm for t in tasks}
        f = {t: float(ctx.loss_values[t]) - self.z[t] for t in tasks}
        d1 = sum(f[t] * direction[t] for t in tasks)
        perpendicular = {t: f[t] - d1 * direction[t] for t in tasks}
        d2 = math.sqrt(sum(v * v for v in perpendicular.values()) + _EPS)
        return {t: direction[t] + self.theta * perpendicular[t] / d2 for t in tasks}

    def extra_repr(self) -> str:
        return f"theta={self.theta}, preference={self.preference!r}, reference={self.reference!r}"
