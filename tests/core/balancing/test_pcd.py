"""PCD: torchjd 0.18's values over steps, its guarantee on the normalised gradients, its edge cases,
and a primary task that is not the first row, is absent, or is given by name."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.balancing import Balancer, BalancerSetup, build
from core.balancing.pcd import solve_pcd_qp
from core.errors import ConfigError


def _jac(seed: int, k: int = 4, p: int = 12) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, k, dtype=torch.float64)[:, None]  # tasks of different gradient scales
    return torch.randn(k, p, generator=g, dtype=torch.float64) * scales


@pytest.mark.parametrize("tau", [0.02, 0.5, [0.1, 0.9, 0.3]])
def test_matches_torchjd_over_steps(tau: float | list[float]) -> None:
    from torchjd.aggregation import PCD as ReferencePCD
    from torchjd.aggregation import PCDWeighting

    ours = build("pcd", tau=tau, beta=0.9)
    reference_tau = torch.tensor(tau, dtype=torch.float64) if isinstance(tau, list) else tau
    weighting, aggregator = PCDWeighting(tau=reference_tau, beta=0.9), ReferencePCD(tau=reference_tau, beta=0.9)
    twin = build("pcd", tau=tau, beta=0.9)
    for step in range(6):
        jac = _jac(step)
        torch.testing.assert_close(ours.weights(jac @ jac.T), weighting(jac @ jac.T), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(twin.aggregate(jac), aggregator(jac), rtol=1e-10, atol=1e-12)


def test_every_secondary_task_gets_its_share_of_progress() -> None:
    """On the first step the EMA is each task's own squared norm: ``g~_j = g_j / sqrt(|g_j|^2 + eps)``."""
    jac = _jac(3, k=5)
    jac[2] = -jac[0] + 0.1 * jac[2]  # a secondary task in conflict with the primary
    tau = 0.3
    update = build("pcd", tau=tau).aggregate(jac)
    unit = jac / jac.norm(dim=1, keepdim=True)
    w = solve_pcd_qp(unit @ unit.T, torch.full((4,), tau, dtype=torch.float64))
    d = w @ unit
    assert torch.allclose(update.norm(), jac[0].norm())
    assert (unit[1:] @ d >= tau - 1e-9).all()
    assert torch.allclose(update / update.norm(), d / d.norm(), atol=1e-9)  # d, rescaled to |g_1|
    assert (unit[2] @ (jac[0])) < 0 < unit[2] @ update  # the conflicting task is not sacrificed


def test_edge_cases_follow_torchjd() -> None:
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    zero_primary = torch.cat([torch.zeros(1, 6, dtype=torch.float64), g[1:]])
    assert torch.equal(build("pcd").aggregate(zero_primary), torch.zeros(6, dtype=torch.float64))
    infeasible = torch.stack([g[0], g[1], -g[1]])  # two opposed secondary tasks: constraints dropped
    assert torch.allclose(build("pcd", tau=0.5).aggregate(infeasible), g[0])
    assert torch.allclose(build("pcd").aggregate(g[:1]), g[0])  # one task: its own gradient


def test_primary_task_by_index_and_absent() -> None:
    from torchjd.aggregation import PCDWeighting

    jac = _jac(5)
    gramian = jac @ jac.T
    order = [2, 0, 1, 3]  # torchjd's primary is its first row
    expected = torch.zeros(4, dtype=torch.float64)
    expected[order] = PCDWeighting()(gramian[order][:, order])
    torch.testing.assert_close(build("pcd", primary=2).weights(gramian), expected, rtol=1e-10, atol=1e-12)
    # a step where the primary task has no label: no primary gradient, so no shared update
    absent = build("pcd", primary=2).weights(gramian[[0, 1, 3]][:, [0, 1, 3]], rows=[0, 1, 3])
    assert torch.equal(absent, torch.zeros(3, dtype=torch.float64))


def named(spec: dict[str, object], tasks: list[str]) -> Balancer:
    balancer = build(spec)
    balancer.setup(BalancerSetup(tasks=tasks, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    return balancer


def test_primary_task_by_name_is_its_index_in_the_task_order() -> None:
    gramian = _jac(5) @ _jac(5).T
    by_index = build("pcd", primary=2).weights(gramian)
    tasks = ["depth", "edges", "segment", "normals"]
    torch.testing.assert_close(named({"name": "pcd", "primary": "segment"}, tasks).weights(gramian), by_index)
    wrapped = named({"name": "cr_mogm", "weighting": {"name": "pcd", "primary": "segment"}}, tasks)
    torch.testing.assert_close(wrapped.weights(gramian), by_index)  # a first step passes unsmoothed
    assert repr(build("pcd", primary="segment").method) == "PCD(primary='segment', tau=0.02, beta=0.999, eps=1e-08)"  # type: ignore[attr-defined]


def test_a_primary_task_that_is_not_a_task_is_refused_at_setup() -> None:
    with pytest.raises(ConfigError, match="primary task 'segmnt' is not a task here; use one of: depth, segment"):
        named({"name": "pcd", "primary": "segmnt"}, ["depth", "segment"])
    with pytest.raises(ConfigError, match="primary task index 2 is out of range for 2 tasks"):
        named({"name": "pcd", "primary": 2}, ["depth", "segment"])
    with pytest.raises(ConfigError, match="names a task, but these rows have no task names"):
        build("pcd", primary="segment").weights(_jac(5) @ _jac(5).T)


def test_a_task_absent_from_a_step_keeps_its_moving_average() -> None:
    method = build("pcd", beta=0.5).method  # type: ignore[attr-defined]
    jac = _jac(6, k=3)
    method.weights(jac @ jac.T)
    before = method.sq_norm_ema.clone()
    method.weights(jac[[0, 2]] @ jac[[0, 2]].T, rows=[0, 2])
    assert method.sq_norm_ema[1] == before[1] and method.steps.tolist() == [2, 1, 2]


def test_weights_are_scale_free_away_from_eps() -> None:
    gramian = _jac(7) @ _jac(7).T
    torch.testing.assert_close(build("pcd").weights(gramian * 1e4), build("pcd").weights(gramian), rtol=1e-6, atol=0)


def test_state_round_trips() -> None:
    method, restored = build("pcd"), build("pcd")
    method.aggregate(_jac(8))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(method.aggregate(_jac(9)), restored.aggregate(_jac(9)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 1.5}, r"tau must be in \[0.0, 1.0\]"),
        ({"tau": [0.1, -0.1]}, r"tau must be in \[0.0, 1.0\]"),
        ({"beta": 1.0}, r"beta must be in \[0, 1\)"),
        ({"eps": -1.0}, "eps must be >= 0"),
        ({"primary": -1}, "primary must be a task name or a task index"),
        ({"alpha": 0.9}, "Valid arguments: space, engine, loss_scales, primary, tau, beta, eps"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build("pcd", **kwargs)


def test_a_tau_per_secondary_task_must_cover_them_all() -> None:
    with pytest.raises(ConfigError, match="one value per secondary task"):
        build("pcd", tau=[0.1]).aggregate(_jac(0, k=3))


def test_a_descent_trajectory_matches_torchjd_and_every_step_helps_the_secondary_tasks() -> None:
    """Gradient descent on three conflicting quadratics, 60 steps: the trajectory is torchjd's, and
    each step is a first-order descent direction for every secondary loss (PCD's guarantee; the
    primary has none: it may pay for the others' progress)."""
    from torchjd.aggregation import PCD as ReferencePCD

    targets = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours, reference = build("pcd", tau=0.1), ReferencePCD(tau=0.1)
    x = expected = torch.zeros(5, dtype=torch.float64)
    for _ in range(60):
        jac = x - targets  # row k: the gradient of 1/2 |x - target_k|^2
        update = ours.aggregate(jac)
        assert (jac[1:] @ update > 0).all()
        x, expected = x - 0.02 * update, expected - 0.02 * reference(expected - targets)
    torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-12)
