"""COSMOS scalarisation (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
Multi-Objective Learning", ICDM 2021, arXiv:2103.13392)."""

from __future__ import annotations

import math

from torch import Tensor

from .base import BalancerSetup, LossBalancer, StepContext
from .method import non_negative
from .preference import TaskVector, preference


class COSMOS(LossBalancer):
    """A linear scalarisation pulled towards a preference direction ``r``:

    ``sum_k r_k L_k - lambda_ cos(r, L)``, ``cos(r, L) = r . L / (|r| |L|)``,

    the cosine term rewarding loss vectors aligned with ``r`` (which spreads the solutions along
    the Pareto front as ``r`` varies). Backpropagated through its linearisation: task k's weight is
    ``r_k - lambda_ (r_k / (|r| |L|) - (r . L) L_k / (|r| |L|^3))``, from the detached,
    rank-averaged loss values (exact under DDP). A step without some task uses the preference of
    the tasks present. The paper also feeds ``r`` to the model (sampled per batch from a Dirichlet)
    to learn the whole front in one network; that is a model input, outside a balancer: here ``r``
    is one fixed trade-off. With ``lambda_ = 0`` and the default ``r = 1`` this is equal weighting.

    Args:
        lambda_: weight of the cosine term, >= 0 (paper: 0.01 to 8, depending on the data).
        preference: ``r``, >= 0: one value per task in config order, or ``{task: value}``; all 1
            when omitted.
    """

    def __init__(self, lambda_: float = 1.0, preference: TaskVector | None = None) -> None:
        super().__init__()
        self.lambda_ = non_negative("COSMOS", "lambda_", lambda_)
        self.preference = preference
        self.r: dict[str, float] = {}

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        self.r = preference("COSMOS", self.preference, list(setup.tasks))

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        tasks = list(losses)
        r = [self.r[t] for t in tasks]
        values = [float(ctx.loss_values[t]) for t in tasks]
        r_norm = math.sqrt(sum(x * x for x in r))
        if r_norm == 0:  # no preference for any task present: the step does not train them
            return dict.fromkeys(tasks, 0.0)
        l_norm = max(math.sqrt(sum(x * x for x in values)), 1e-8)  # torch's cosine_similarity floor
        dot = sum(a * b for a, b in zip(r, values, strict=True))
        return {
            t: rk - self.lambda_ * (rk / (r_norm * l_norm) - dot * lk / (r_norm * l_norm**3))
            for t, rk, lk in zip(tasks, r, values, strict=True)
        }

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, preference={self.preference!r}"
