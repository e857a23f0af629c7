"""Loss-space methods against their papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from core.balancing import BalancerSetup, StepContext, build

TASKS = ["a", "b", "c"]


def _setup(method, sizes=(100, 10, 1), steps_per_epoch=2):
    method.setup(
        BalancerSetup(
            tasks=TASKS,
            task_weights={"a": 2.0, "b": 1.0, "c": 0.5},
            dataset_sizes=dict(zip(TASKS, sizes, strict=True)),
            steps_per_epoch=steps_per_epoch,
        )
    )
    return method


def _ctx(losses, step=0):
    seen = []
    return StepContext(step=step, backward=seen.append, loss_values={t: float(v) for t, v in losses.items()}), seen


def _losses(*values):
    return {t: torch.tensor(float(v), requires_grad=True) for t, v in zip(TASKS, values, strict=True)}


@pytest.mark.parametrize(
    ("heuristic", "expected"),
    [
        ("config", [2.0, 1.0, 0.5]),
        ("uniform", [1, 1, 1]),
        ("size", [3 * 100 / 111, 3 * 10 / 111, 3 / 111]),
        ("inverse_initial_loss", [0.5, 0.25, 0.125]),
    ],
)
def test_ew_heuristics(heuristic, expected):
    ew = _setup(build("ew", heuristic=heuristic))
    ctx, seen = _ctx(_losses(2.0, 4.0, 8.0))
    weights = ew.backward(_losses(2.0, 4.0, 8.0), ctx)
    assert [weights[t] for t in TASKS] == pytest.approx(expected)
    assert float(seen[0]) == pytest.approx(sum(w * v for w, v in zip(expected, (2.0, 4.0, 8.0), strict=True)))
    # fixed after the first step
    assert ew.backward(_losses(1.0, 1.0, 1.0), _ctx(_losses(1.0, 1.0, 1.0))[0]) == weights


def test_ew_explicit_weights_must_cover_every_task():
    with pytest.raises(ValueError, match=r"miss tasks \['c'\]"):
        _setup(build("ew", weights={"a": 1.0, "b": 2.0}))


def test_uw_matches_kendall_and_learns_log_variances():
    uw = _setup(build("uw", init=0.5))
    losses = _losses(1.0, 2.0, 3.0)
    ctx, seen = _ctx(losses)
    uw.backward(losses, ctx)
    expected = sum(0.5 * math.exp(-0.5) * v + 0.25 for v in (1.0, 2.0, 3.0))
    assert float(seen[0]) == pytest.approx(expected)
    seen[0].backward()
    # d/ds of 0.5 e^{-s} L + 0.5 s = -0.5 e^{-s} L + 0.5: larger losses push s up (lower weight)
    assert uw.log_vars["c"].grad.item() == pytest.approx(-0.5 * math.exp(-0.5) * 3.0 + 0.5)


def test_dwa_weights_follow_the_ratio_of_the_last_two_periods():
    dwa = _setup(build("dwa", temperature=2.0, period=1))
    history = [(1.0, 1.0, 1.0), (1.0, 2.0, 0.5)]
    for values in history:
        weights = dwa.backward(_losses(*values), _ctx(_losses(*values))[0])
        assert weights == {t: 1.0 for t in TASKS}
    weights = dwa.backward(_losses(1.0, 1.0, 1.0), _ctx(_losses(1.0, 1.0, 1.0))[0])
    ratios = torch.tensor([1.0, 2.0, 0.5])
    expected = 3 * torch.softmax(ratios / 2.0, 0)
    assert [weights[t] for t in TASKS] == pytest.approx(expected.tolist())


def test_rlw_is_seeded_and_sums_to_k():
    draws = []
    for _ in range(2):
        rlw = _setup(build("rlw", seed=7))
        draws.append([rlw.backward(_losses(1, 1, 1), _ctx(_losses(1, 1, 1))[0]) for _ in range(3)])
    assert draws[0] == draws[1]
    assert all(sum(w.values()) == pytest.approx(3.0) for w in draws[0])
    assert draws[0][0] != draws[0][1]


def test_gls_is_the_geometric_mean():
    gls = _setup(build("gls"))
    losses = _losses(1.0, 4.0, 16.0)
    ctx, seen = _ctx(losses)
    gls.backward(losses, ctx)
    assert float(seen[0]) == pytest.approx(4.0)
    seen[0].backward()
    assert losses["c"].grad.item() == pytest.approx(4.0 / (3 * 16.0))


def test_famo_shifts_weight_to_the_task_that_improves_least():
    famo = _setup(build("famo", w_lr=0.1, gamma=0.0))
    for _ in range(5):
        losses = _losses(1.0, 1.0, 1.0)
        famo.backward(losses, _ctx(losses)[0])
        famo.after_step(lambda: {"a": 0.5, "b": 0.9, "c": 0.99})  # a improves fastest, c slowest
    z = torch.softmax(famo.logits, 0)
    assert z[2] > z[1] > z[0]
