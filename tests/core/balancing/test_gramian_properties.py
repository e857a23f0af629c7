"""Every Gramian-based weighting of the registry on the Jacobians where shortcuts stop being exact:
zero rows (a task whose gradient is exactly 0 this step), duplicate rows and rank-deficient blocks.

Each is checked against an independent solve (a brute-force active-set QP or bounded least squares
on the Jacobian itself, never on the Gramian factor the methods use; torchjd where the method is
not a QP) and, where it declares it, for permutation invariance.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import Tensor

from core.balancing import BALANCERS, GradientMethod, build

#: every Gramian-based weighting in the registry (kind "weighting": a function of J J^T)
WEIGHTINGS = [
    n
    for n in BALANCERS.names()
    if isinstance(BALANCERS.get(n), GradientMethod) and BALANCERS.get(n).method.kind == "weighting"
]


def _method_class(name: str) -> type:
    return BALANCERS.get(name).method  # type: ignore[attr-defined]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cases() -> dict[str, Tensor]:
    g = _gen(0)
    base = torch.randn(6, 8, generator=g, dtype=torch.float64)
    zero = base.clone()
    zero[[1, 4]] = 0
    duplicate = base.clone()
    duplicate[3], duplicate[5] = base[0], base[1]
    low = torch.randn(4, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 8, generator=g, dtype=torch.float64)
    block = torch.cat([low, torch.randn(2, 8, generator=g, dtype=torch.float64)])
    return {"zero_rows": zero, "duplicate_rows": duplicate, "rank_deficient_block": block}


def issue_matrix() -> Tensor:
    """20 x 10 with 13 zero rows, the other 7 of rank 3 (issue 20: the default ridge made UPGrad's
    update depend on the row order, up to 1.0 off on this one for 14 of 41 orders)."""
    g = _gen(4)
    jac = torch.randn(20, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 10, generator=g, dtype=torch.float64)
    jac[torch.randperm(20, generator=g)[:13]] = 0
    return jac


CASES = list(cases())


def _weights(name: str, jac: Tensor, **kwargs: object) -> Tensor:
    losses = torch.ones(jac.shape[0], dtype=torch.float64)
    return build(name, **kwargs).method.weights(jac @ jac.T, losses)  # type: ignore[attr-defined]


# -- independent exact solves ---------------------------------------------------------------------
def dual_cone_update(jac: Tensor, u: np.ndarray) -> Tensor:
    """``J^T v``, ``v = argmin_{v >= u} |J^T v|`` by bounded-variable least squares on J itself
    (the update is unique even where v is not)."""
    a = jac.T.numpy()
    x = scipy.optimize.lsq_linear(a, -a @ u, bounds=(0.0, np.inf), method="bvls", tol=1e-15).x
    return torch.from_numpy(a @ (u + x))


def upgrad_reference(jac: Tensor) -> Tensor:
    k = jac.shape[0]
    return sum(dual_cone_update(jac, np.eye(k)[i] / k) for i in range(k))  # type: ignore[return-value]


def dualproj_reference(jac: Tensor) -> Tensor:
    return dual_cone_update(jac, np.full(jac.shape[0], 1.0 / jac.shape[0]))


def mgda_reference(jac: Tensor) -> Tensor:
    """The min-norm point of the rows' convex hull by enumerating supports (K <= 8): on each support
    the equality-constrained least squares, kept when its weights are non-negative."""
    best: Tensor | None = None
    k = jac.shape[0]
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            rows = jac[list(support)]
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size], kkt[:size, size], kkt[size, :size] = rows @ rows.T, 1.0, 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            w = torch.linalg.lstsq(kkt, rhs[:, None], driver="gelsd").solution[:size, 0]
            if (w >= -1e-12).all() and abs(float(w.sum()) - 1) < 1e-9:
                point = w @ rows
                if best is None or point.norm() < best.norm():
                    best = point
    assert best is not None
    return best


def pcd_reference(jac: Tensor, tau: float = 0.02, eps: float = 1e-8) -> Tensor:
    """PCD's first step on J itself: normalise the rows, solve its QP in parameter space (SLSQP),
    rescale to the primary row's norm."""
    normalized = (jac / (jac.pow(2).sum(1, keepdim=True) + eps).sqrt()).numpy()
    g1, secondary = normalized[0], normalized[1:]
    constraints = {
        "type": "ineq",
        "fun": lambda d: secondary @ d - tau * (secondary**2).sum(1),
        "jac": lambda d: secondary,
    }
    d = scipy.optimize.minimize(
        lambda d: 0.5 * ((d - g1) ** 2).sum(),
        g1,
        jac=lambda d: d - g1,
        constraints=[constraints],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    ).x
    return torch.from_numpy(d) * jac[0].norm() / float(np.linalg.norm(d))


def torchjd_reference(name: str) -> Callable[[Tensor], Tensor]:
    from torchjd.aggregation import IMTLG, AlignedMTL, CAGrad, MoDoWeighting, SDMGradWeighting

    return {
        "imtl_g": IMTLG(),
        "aligned_mtl": AlignedMTL(),
        "cagrad": CAGrad(c=0.4),
        "sdmgrad": lambda jac: SDMGradWeighting()(jac @ jac.T) @ jac,
        "modo": lambda jac: MoDoWeighting()(jac @ jac.T) @ jac,
    }[name]


#: name -> (the reference update, our hyperparameters, relative tolerance)
REFERENCES: dict[str, tuple[Callable[[Tensor], Tensor], dict[str, object], float]] = {
    "upgrad": (upgrad_reference, {"ridge": 0.0}, 1e-7),
    "dualproj": (dualproj_reference, {"ridge": 0.0}, 1e-7),
    "mgda": (mgda_reference, {}, 1e-7),
    "imtl_g": (lambda jac: torchjd_reference("imtl_g")(jac), {}, 1e-9),
    "imtl": (lambda jac: torchjd_reference("imtl_g")(jac), {}, 1e-9),  # IMTL-G on learned loss scales
    "aligned_mtl": (lambda jac: torchjd_reference("aligned_mtl")(jac), {}, 1e-9),
    "cagrad": (lambda jac: torchjd_reference("cagrad")(jac), {"rescale": False}, 1e-4),  # torchjd's conic solver
    "sdmgrad": (lambda jac: torchjd_reference("sdmgrad")(jac), {}, 1e-6),
    "modo": (lambda jac: torchjd_reference("modo")(jac), {}, 1e-12),
    "pcd": (pcd_reference, {}, 1e-6),  # SLSQP's accuracy
    "cr_mogm": (upgrad_reference, {"weighting": {"name": "upgrad", "ridge": 0.0}}, 1e-7),  # first call: the wrapped one
}
#: (name, case) pairs with no reference, and why
NO_REFERENCE_ON = {
    # torchjd returns a zero update when the min-norm combination vanishes (a zero row); we return the mean
    ("cagrad", "zero_rows"): "documented difference from torchjd (see test_methods.py)",
}
#: weightings checked by their defining equation instead (they are not QPs), and the cases where it has no solution
DEFINING_EQUATION = {"nash_mtl", "fairgrad"}
#: weightings with no single exact answer to compare with, and why
NO_REFERENCE = {
    "pcgrad": "projects in a random task order (seeded): the answer depends on the draw",
    "gradvac": "projects in a random task order (seeded) towards EMA targets kept between steps",
    "gradnorm": "its weights are learned state (a step on the loss history), not a function of this Gramian",
}
#: weightings that do not declare permutation invariance, and why
NOT_PERMUTATION_INVARIANT = {
    "pcgrad": "projects in a random task order: a permutation changes which order is drawn",
    "gradvac": "projects in a random task order: a permutation changes which order is drawn",
    "gradnorm": "keeps learned weights and initial losses per row index between steps",
    "sdmgrad": "warm-starts from the previous step's weights, kept per row index",
    "modo": "steps from the previous step's weights, kept per row index",
    "pcd": "the primary task (row index 0 by default) is followed; the others only constrain it",
    "cr_mogm": "averages the weights per row index over steps (and wraps any weighting)",
}


def test_every_weighting_is_accounted_for() -> None:
    assert {"upgrad", "dualproj", "mgda"} <= set(WEIGHTINGS)
    for name in WEIGHTINGS:
        declared = "permutation_invariant" in _method_class(name).properties
        assert declared != (name in NOT_PERMUTATION_INVARIANT), name
        assert (name in REFERENCES) + (name in DEFINING_EQUATION) + (name in NO_REFERENCE) == 1, name


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", WEIGHTINGS)
def test_weights_are_finite(name: str, case: str) -> None:
    w = _weights(name, cases()[case])
    assert w.shape == (6,) and bool(torch.isfinite(w).all())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", [n for n in WEIGHTINGS if n not in NOT_PERMUTATION_INVARIANT])
def test_permuting_the_rows_leaves_the_update_unchanged(name: str, case: str) -> None:
    jac = cases()[case]
    update = _weights(name, jac) @ jac
    for seed in range(6):
        perm = torch.randperm(6, generator=_gen(seed))
        assert (_weights(name, jac[perm]) @ jac[perm] - update).norm() <= 1e-8 * jac.norm(), seed


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_an_independent_exact_solve(name: str, case: str) -> None:
    if (name, case) in NO_REFERENCE_ON:
        pytest.skip(NO_REFERENCE_ON[name, case])
    reference, kwargs, tol = REFERENCES[name]
    jac = cases()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(jac)
    ours = _weights(name, jac, **kwargs) @ jac
    assert (ours - expected).norm() <= tol * max(float(expected.norm()), 1.0), (ours - expected).norm()


@pytest.mark.parametrize("case", ["duplicate_rows", "rank_deficient_block"])
def test_nash_mtl_and_fairgrad_solve_their_equations(case: str) -> None:
    """Not QPs: G a = 1 / a (Nash-MTL, on the normalised Gramian) and G w = w^(-1/alpha) (FairGrad).
    On a zero row neither equation has a solution ((G a)_k = 0): the weights there only need to be
    finite (test_weights_are_finite), and they multiply a zero gradient."""
    jac = cases()[case]
    gramian = jac @ jac.T
    normalized = gramian / gramian.norm()
    alpha = build("nash_mtl").method.solve(normalized)  # type: ignore[attr-defined]
    assert (alpha > 0).all() and (normalized @ alpha - 1 / alpha).norm() <= 1e-3 * (1 / alpha).norm()
    w = build("fairgrad").weights(gramian)
    assert (w > 0).all() and torch.allclose(gramian @ w, 1 / w, rtol=1e-4)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_a_zero_row_keeps_its_bound_and_leaves_the_other_weights_alone(name: str) -> None:
    """The exact QP: a zero row's weight is its bound 1/K, and the other rows' weights are those of the
    Jacobian without it (the bounds scale from 1/K' to 1/K, and the QP is homogeneous in them)."""
    jac = cases()["zero_rows"]
    live = jac.norm(dim=1) > 0
    w = _weights(name, jac)
    assert torch.equal(w[~live], torch.full((2,), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(w[live], _weights(name, jac[live]) * 4 / 6, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_the_default_ridge_is_exact_and_order_free_on_the_issue_matrix(name: str) -> None:
    jac = issue_matrix()
    expected = (upgrad_reference if name == "upgrad" else dualproj_reference)(jac)
    k = jac.shape[0]
    weights = _weights(name, jac)
    for seed in range(41):
        perm = torch.randperm(k, generator=_gen(seed)) if seed else torch.arange(k)
        permuted = _weights(name, jac[perm])
        assert torch.allclose(permuted, weights[perm], rtol=1e-9, atol=1e-12), seed
        # the ridge's bias is relative to the cosines (1e-5): within 1e-4 of the exact update
        assert (permuted @ jac[perm] - expected).norm() <= 1e-4 * jac.norm(dim=1).max(), seed
