"""PCD, priority-constrained descent ("Not All Objectives Are Born Equal: Priority-Constrained Descent
for Hierarchical Multi-Objective Optimization", TMLR 2026, arXiv:2606.29521)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .method import Weighting, grow, in_range, non_negative


class PCD(Weighting):
    """Follows one primary task's gradient as closely as possible while every other task keeps a
    guaranteed share of progress:

    ``d = argmin_d 1/2 |d - g~_p|^2  s.t.  g~_j^T d >= tau_j |g~_j|^2`` for every secondary task j,

    with ``g~_k = g_k / sqrt(v_k + eps)`` and ``v_k`` the bias-corrected EMA (decay ``beta``) of
    task k's squared gradient norm, so ``tau`` is a scale-free fraction of the progress a step along
    each task's own normalised gradient would give. The update is ``d`` rescaled to ``|g_p|``. The
    QP is solved exactly on the Gramian by a dual active-set method (Goldfarb & Idnani, 1983): the
    weights are ``[1, mu]`` of the normalised rows, ``mu`` the constraints' KKT multipliers.

    Edge cases (as torchjd 0.18): ``g_p = 0`` or ``d = 0`` (up to rounding) give a zero update;
    infeasible constraints (two opposed secondary tasks) are dropped, giving ``g_p``. A step without
    the primary task's label has no primary gradient, so its shared update is zero as well.

    Args:
        primary: the primary task: its name, or its index in the config's task order.
        tau: guaranteed fraction in [0, 1]: one for every secondary task, or one per secondary task
            (in task order, the primary left out).
        beta: decay of the squared-norm EMA, in [0, 1).
        eps: added to the EMA before its inverse square root.
    """

    cost: ClassVar[str] = "one K x K dual active-set QP (about K small solves)"
    state: ClassVar[str] = "per-task EMA of squared gradient norms, step counts"

    def __init__(
        self, primary: int | str = 0, tau: float | Sequence[float] = 0.02, beta: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if isinstance(primary, str):
            self.primary: int | str = primary
            self.row: int | None = None  # known once the setup names the tasks
        elif isinstance(primary, bool) or int(primary) != primary or primary < 0:
            raise ConfigError(f"PCD: primary must be a task name or a task index >= 0, got {primary!r}")
        else:
            self.primary = self.row = int(primary)
        if isinstance(tau, (int, float)):
            self.tau: float | list[float] = in_range("PCD", "tau", tau, 0.0, 1.0)
        else:
            self.tau = [in_range("PCD", "tau", t, 0.0, 1.0) for t in tau]
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"PCD: beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.eps = non_negative("PCD", "eps", eps)
        self.sq_norm_ema = torch.zeros(0, dtype=torch.float64)
        self.steps = torch.zeros(0, dtype=torch.int64)

    def name_tasks(self, tasks: Sequence[str]) -> None:
        if not tasks:  # a loop that names no tasks: an index is used as it is
            return
        if isinstance(self.primary, str) and self.primary not in tasks:
            raise ConfigError(f"PCD: primary task {self.primary!r} is not a task here; use one of: {', '.join(tasks)}")
        self.row = list(tasks).index(self.primary) if isinstance(self.primary, str) else self.primary
        if self.row >= len(tasks):
            raise ConfigError(
                f"PCD: primary task index {self.row} is out of range for {len(tasks)} tasks ({', '.join(tasks)}); "
                "give an index below that or the task's name"
            )

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        if self.row is None:
            raise ConfigError(
                f"PCD: primary={self.primary!r} names a task, but these rows have no task names; give the "
                "primary task's row index, or name the tasks (a config's tasks, or tasks=[...] in the own-loop API)"
            )
        weights = torch.zeros(gramian.shape[0], dtype=torch.float64)
        scales = self._update_scales(gramian.diagonal(), rows)
        if self.row not in rows:
            return weights
        order = [rows.index(self.row)] + [i for i, r in enumerate(rows) if r != self.row]
        g, s = gramian[order][:, order], scales[order]
        if not g[0, 0] > 0:
            return weights
        normalized = g * torch.outer(s, s)
        w = solve_pcd_qp(normalized, self._taus([rows[i] for i in order[1:]]))
        sq_norm = w @ normalized @ w
        rounding = (w.abs() @ normalized.diagonal().sqrt()) ** 2  # the size of sq_norm's rounding error
        if sq_norm > 10 * torch.finfo(torch.float64).eps * rounding:
            weights[order] = w * s * (g[0, 0] / sq_norm).sqrt()
        return weights

    def _update_scales(self, sq_norms: Tensor, rows: list[int]) -> Tensor:
        """Fold this step's squared norms into each present task's EMA; ``1 / sqrt(v + eps)``."""
        size = max(rows) + 1
        self.sq_norm_ema, self.steps = grow(self.sq_norm_ema, size, 0.0), grow(self.steps, size, 0)
        index = torch.tensor(rows)
        self.steps[index] += 1
        self.sq_norm_ema[index] = self.beta * self.sq_norm_ema[index] + (1 - self.beta) * sq_norms
        debiased = self.sq_norm_ema[index] / (1 - self.beta ** self.steps[index].double())
        denominators = (debiased + self.eps).sqrt()
        # a task whose gradient has always been 0 (eps = 0): its scale does not matter, avoid 1/0
        return torch.where(denominators > 0, 1 / denominators.clamp_min(1e-300), 0.0)

    def _taus(self, secondary: list[int]) -> Tensor:
        if isinstance(self.tau, float):
            return torch.full((len(secondary),), self.tau, dtype=torch.float64)
        # position among the secondary tasks: the primary is left out of the list
        position = [r - (r > self.row) for r in secondary]  # type: ignore[operator]
        if max(position, default=-1) >= len(self.tau):
            raise ConfigError(
                f"PCD: tau has {len(self.tau)} values but task {max(secondary)} is a secondary task; "
                "give one value per secondary task (the task order without the primary) or a single float"
            )
        return torch.tensor([self.tau[p] for p in position], dtype=torch.float64)

    def get_extra_state(self) -> dict[str, Any]:
        return {"sq_norm_ema": self.sq_norm_ema.clone(), "steps": self.steps.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sq_norm_ema, self.steps = state["sq_norm_ema"].double().clone(), state["steps"].long().clone()


def solve_pcd_qp(gramian: Tensor, taus: Tensor, tol: float = 1e-9, dependence_tol: float = 1e-9) -> Tensor:
    """``[1, mu]`` with ``d = g_1 + sum_j mu_j g_j`` solving
    ``min 1/2 |d - g_1|^2  s.t.  g_j^T d >= tau_j |g_j|^2`` (j >= 2), from the Gramian of the rows.

    Dual active set (Goldfarb & Idnani, 1983) for an identity Hessian: start from the unconstrained
    minimiser ``d = g_1``; repeatedly take the most violated constraint p and move along
    ``z = g_p - sum_{j active} r_j g_j`` (g_p's part orthogonal to the active rows), dropping an
    active constraint whenever its multiplier would turn negative. ``d`` stays a combination of
    the rows, so every inner product is read from G. A constraint violated by at most ``tol`` times
    the largest squared norm counts as met; a row whose orthogonal part keeps at most
    ``dependence_tol`` of its squared norm counts as dependent on the active rows. No step possible
    (a dependent row and nothing to drop) means the constraints are infeasible: ``[1, 0, ...]``.
    """
    m = gramian.shape[0]
    out = torch.zeros(m, dtype=torch.float64)
    out[0] = 1.0
    if m == 1:
        return out
    gs = gramian[1:, 1:]
    b = taus * gs.diagonal() - gramian[1:, 0]  # constraint j reads (G_s mu)_j >= b_j
    mu = torch.zeros(m - 1, dtype=torch.float64)
    atol = tol * max(float(gramian.diagonal().max()), torch.finfo(torch.float64).tiny)
    active: list[int] = []
    budget = 10 * m  # each iteration adds or drops one constraint; this only guards against cycling
    while budget > 0:
        slacks = gs @ mu - b
        slacks[active] = 0.0  # active constraints hold with equality, up to rounding
        p = int(slacks.argmin())
        if slacks[p] >= -atol:
            break
        violation = float(slacks[p])
        while budget > 0:
            budget -= 1
            if active:
                r = torch.linalg.solve(gs[active][:, active], gs[active, p])
                z_sq = float(gs[p, p] - gs[p, active] @ r)
                ratios = torch.where(r > 0, mu[active] / r, torch.inf)
                drop = int(ratios.argmin())
                partial = float(ratios[drop])
            else:
                r, z_sq, drop, partial = torch.zeros(0, dtype=torch.float64), float(gs[p, p]), -1, float("inf")
            full = -violation / z_sq if z_sq > dependence_tol * float(gs[p, p]) else float("inf")
            step = min(partial, full)
            if step == float("inf"):
                return out
            mu[active] -= step * r
            mu[p] += step
            if full <= partial:
                active.append(p)
                break
            mu[active[drop]] = 0.0
            del active[drop]
            violation = float(gs[p] @ mu - b[p])
    out[1:] = mu.clamp_min(0.0)
    return out
