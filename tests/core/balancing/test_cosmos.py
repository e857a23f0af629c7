"""COSMOS: its linearised backward gives torchjd 0.18's gradient, for every preference form."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.balancing import BalancerSetup, StepContext, build
from core.errors import ConfigError

TASKS = ["a", "b", "c"]


def _setup(**kwargs: object):  # type: ignore[no-untyped-def]
    method = build("cosmos", **kwargs)
    method.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    return method


def _gradients(method, tasks: list[str]) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[no-untyped-def]
    """Our gradient w.r.t. theta through per-task losses, and the losses (for the reference)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(len(TASKS), 8, 4, generator=g), torch.randn(len(TASKS), 8, generator=g)
    theta = torch.randn(4, generator=g, requires_grad=True)
    losses = {t: ((x[i] @ theta - y[i]) ** 2).mean() for i, t in enumerate(TASKS) if t in tasks}
    ctx = StepContext(
        step=0,
        backward=lambda total: total.backward(retain_graph=True),  # the reference backpropagates too
        loss_values={t: float(v.detach()) for t, v in losses.items()},
    )
    method.backward(losses, ctx)
    return theta, losses


@pytest.mark.parametrize(
    ("lambda_", "preference", "tasks"),
    [
        (1.0, None, TASKS),
        (4.0, [0.2, 0.5, 0.3], TASKS),
        (0.5, {"c": 2.0, "a": 1.0, "b": 0.0}, TASKS),
        (2.0, [0.2, 0.5, 0.3], ["a", "c"]),  # a step without task b: the preference of the others
    ],
)
def test_gradient_matches_torchjd(lambda_: float, preference: object, tasks: list[str]) -> None:
    from torchjd.scalarization import COSMOS

    theta, losses = _gradients(_setup(lambda_=lambda_, preference=preference), tasks)
    r = {"a": 1.0, "b": 1.0, "c": 1.0}
    if isinstance(preference, list):
        r = dict(zip(TASKS, preference, strict=True))
    elif isinstance(preference, dict):
        r = preference  # type: ignore[assignment]
    weights = torch.tensor([r[t] for t in tasks])
    (expected,) = torch.autograd.grad(COSMOS(lambda_, weights)(torch.stack([losses[t] for t in tasks])), theta)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-5, atol=1e-7)


def test_lambda_zero_with_the_default_preference_is_equal_weighting() -> None:
    method = _setup(lambda_=0.0)
    values = {"a": 0.3, "b": 2.0, "c": 7.0}
    assert method.weights(dict.fromkeys(values, torch.tensor(0.0)), StepContext(0, lambda t: None, values)) == {
        t: 1.0 for t in TASKS
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lambda_": -1.0}, "lambda_ must be >= 0"),
        ({"preference": [1.0, 2.0]}, "2 values for 3 tasks"),
        ({"preference": {"a": 1.0, "b": 1.0, "d": 1.0}}, r"unknown: \['d'\], missing: \['c'\]"),
        ({"preference": [1.0, -1.0, 1.0]}, "preference must be >= 0"),
        ({"preference": [0.0, 0.0, 0.0]}, "at least one value > 0"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _setup(**kwargs)
