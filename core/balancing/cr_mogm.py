"""CR-MOGM, correlation-reduced stochastic multi-objective gradient manipulation (Zhou et al., "On the
Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .method import Weighting, grow, in_range


class CRMOGM(Weighting):
    """Any Gramian weighting with its weights smoothed across steps:
    ``lambda_t = alpha lambda_(t-1) + (1 - alpha) lambda^_t``, with ``lambda^_t`` the wrapped
    weighting's weights and ``lambda_0 = lambda^_1`` (a task's first weights pass unchanged).

    The paper shows that stochastic MGDA-like methods are biased because this step's weights and
    gradients come from the same batch; the moving average decorrelates them and restores
    convergence. The smoothing is per task, so a step without some task leaves its average as it is.
    ``alpha = 0`` is the wrapped weighting itself. The paper's Corollary 1 lets ``alpha`` grow
    towards 1 as the learning rate decays; here it is fixed.

    Args:
        weighting: the wrapped Gramian weighting, as a registry name or ``{"name": ..., **kwargs}``
            (``"upgrad"``, ``{"name": "mgda"}``, ...).
        alpha: weight of the previous average, in [0, 1] (torchjd 0.18: 0.9).
    """

    cost: ClassVar[str] = "the wrapped weighting's, plus a K-vector average"
    state: ClassVar[str] = "per-task moving average of the weights (plus the wrapped weighting's state)"

    def __init__(self, weighting: str | Mapping[str, Any] = "upgrad", alpha: float = 0.9) -> None:
        super().__init__()
        self.weighting = weighting if isinstance(weighting, str) else dict(weighting)
        self.alpha = in_range("CRMOGM", "alpha", alpha, 0.0, 1.0)
        self.inner = _wrapped(weighting)
        # what the wrapped weighting needs and where it is defined holds for the wrapper too
        self.spaces, self.needs_losses, self.randomized = (  # type: ignore[misc]
            self.inner.spaces,
            self.inner.needs_losses,
            self.inner.randomized,
        )
        self.average = torch.zeros(0, dtype=torch.float64)  # NaN: a task not seen yet

    def name_tasks(self, tasks: Sequence[str]) -> None:
        self.inner.name_tasks(tasks)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        fresh = self.inner.weights(gramian, losses, rows)
        self.average = grow(self.average, max(rows) + 1, float("nan"))
        previous = self.average[rows]
        previous = torch.where(torch.isnan(previous), fresh, previous)
        smoothed = self.alpha * previous + (1 - self.alpha) * fresh
        self.average[rows] = smoothed
        return smoothed

    def get_extra_state(self) -> dict[str, Any]:
        return {"average": self.average.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.average = state["average"].double().clone()


def _wrapped(spec: str | Mapping[str, Any]) -> Weighting:
    from . import METHODS, build  # the registry imports this module

    built = build(spec)
    method = getattr(built, "method", None)
    if not isinstance(method, Weighting):
        valid = [n for n, m in METHODS.items() if issubclass(m, Weighting)]
        raise ConfigError(
            f"CRMOGM smooths the weights of a Gramian weighting; {spec!r} is not one. Valid: {', '.join(valid)}"
        )
    return method
