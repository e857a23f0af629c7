"""Small exact solvers on the K x K Gramian, shared by the gradient-space methods.

Both quadratic programs reduce to non-negative least squares on a K x K factor ``A`` of the
Gramian (``A^T A = G``), solved exactly by scipy's active-set NNLS (scipy ships with
scikit-learn; it is imported only when a method needs it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError


def scipy_optimize() -> Any:
    try:
        import scipy.optimize
    except ImportError as e:
        raise ConfigError("this balancing method needs scipy: pip install 'jointtrain[solvers]' (or scipy)") from e
    return scipy.optimize


#: a diagonal entry of the trace-normalised Gramian at or below this is a zero row (d = sqrt of it < 1e-150)
_ZERO = 1e-300


def normalized(gramian: Tensor, eps: float = 1e-30) -> np.ndarray:
    """``G / trace(G)`` in float64 (the weights of scale-invariant methods do not change)."""
    g = gramian.detach().double().cpu().numpy()
    g = (g + g.T) / 2
    trace = float(np.trace(g))
    return g / trace if trace > eps else np.zeros_like(g)


def jacobi(gramian: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G = D C D`` with ``D = diag(|g_k|)``: the cosine matrix C is well conditioned even when
    the gradients' norms span many orders of magnitude (rows of zero norm get ``d = 1``).
    A NumPy array is taken as already normalised (:func:`normalized`; D is defined up to a scale)."""
    g = gramian if isinstance(gramian, np.ndarray) else normalized(gramian)
    d = np.sqrt(np.clip(np.diag(g), 0.0, None))
    d = np.where(d * d > _ZERO, d, 1.0)
    return g / d[:, None] / d[None, :], d


def factor(g: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """A K x K matrix ``A`` with ``A^T A = G + ridge I`` (PSD part of G; G may be rank-deficient)."""
    eigvals, eigvecs = np.linalg.eigh(g)
    return np.sqrt(np.clip(eigvals, 0.0, None) + ridge)[:, None] * eigvecs.T


def min_norm_simplex(gramian: Tensor) -> Tensor:
    """``argmin_{w >= 0, sum w = 1} w^T G w``: the min-norm point of the rows' convex hull.

    In the Jacobi-scaled variables ``y = D w`` the constraint is ``c . y = 1`` with ``c = 1 / d``.
    With ``delta`` the optimum, ``min_{y >= 0} |A y|^2 + (c . y - 1)^2`` is solved by
    ``y = y* / (1 + delta)`` (the objective is ``s^2 delta + (s - 1)^2`` along ``y = s y*``), so
    one NNLS gives the exact solution, rank-deficient Gramians included.
    """
    k = gramian.shape[0]
    g = normalized(gramian)
    if not g.any():
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    diag = np.diag(g)
    if (diag <= _ZERO).any():  # a zero gradient is the min-norm point
        return torch.from_numpy((diag <= _ZERO) / float((diag <= _ZERO).sum()))
    cos, d = jacobi(gramian)
    a = np.vstack([factor(cos), 1.0 / d[None, :]])
    b = np.zeros(k + 1)
    b[-1] = 1.0
    y, _ = scipy_optimize().nnls(a, b, maxiter=50 * k)
    w = y / d
    return torch.from_numpy(w / w.sum())


def project_dual_cone(gramian: Tensor, u: Tensor, ridge: float = 0.0) -> Tensor:
    """``argmin_{v >= u} v^T G v`` for each row ``u`` of ``U``: weights of ``J^T u`` projected onto
    the dual cone of J's rows (Jacobian descent, Prop. 1). In Jacobi-scaled variables
    ``y = D v = D u + x`` with ``x >= 0`` it is the NNLS ``min |A x + A D u|``, ``A^T A = C + ridge I``
    (the ridge makes the minimiser unique when G is rank-deficient).

    A zero row of J (zero diagonal of G: a task whose gradient is exactly 0) enters no product, so
    its ``v`` stays at its bound ``u`` (the ridge's choice, exactly) and the NNLS runs on the other
    rows only: left in, its columns of ``A`` are only ``sqrt(ridge)`` long and the NNLS stopped at
    tolerances that depend on where those rows sit (a row-order-dependent update).
    """
    # NumPy throughout: K is small, and each torch op on a K x K tensor costs more than its arithmetic
    rows = u.detach().double().cpu().numpy().reshape(-1, gramian.shape[0])
    out = rows.copy()
    g = normalized(gramian)
    live = np.diag(g) > _ZERO
    if live.any():
        cos, d = jacobi(g[np.ix_(live, live)])
        a = factor(cos, ridge)
        nnls = scipy_optimize().nnls
        for row, v in zip(rows, out, strict=True):
            x, _ = nnls(a, -a @ (d * row[live]), maxiter=50 * len(d))
            v[live] = row[live] + x / d
    return torch.from_numpy(out).reshape(u.shape)
