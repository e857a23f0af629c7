"""PBI: its linearised backward gives torchjd 0.18's gradient, with and without a reference point."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.balancing import BalancerSetup, StepContext, build
from core.errors import ConfigError

TASKS = ["a", "b", "c"]


def _setup(**kwargs: object):  # type: ignore[no-untyped-def]
    method = build("pbi", **kwargs)
    method.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    return method


def _backward(method, tasks: list[str]) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
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
    ("theta", "preference", "reference", "tasks"),
    [
        (5.0, None, None, TASKS),
        (2.0, [0.2, 0.5, 0.3], [0.1, 0.0, 0.5], TASKS),
        (0.0, {"a": 1.0, "b": 3.0, "c": 0.5}, None, TASKS),
        (5.0, [0.2, 0.5, 0.3], {"a": 0.1, "b": 0.2, "c": 0.3}, ["b", "c"]),  # a step without task a
    ],
)
def test_gradient_matches_torchjd(theta: float, preference: object, reference: object, tasks: list[str]) -> None:
    from torchjd.scalarization import PBI

    param, losses = _backward(_setup(theta=theta, preference=preference, reference=reference), tasks)

    def vector(value: object, default: float) -> Tensor:
        if value is None:
            return torch.full((len(tasks),), default)
        by_task = value if isinstance(value, dict) else dict(zip(TASKS, value, strict=True))  # type: ignore[call-overload]
        return torch.tensor([by_task[t] for t in tasks])

    scalarizer = PBI(theta, vector(preference, 1.0), None if reference is None else vector(reference, 0.0))
    (expected,) = torch.autograd.grad(scalarizer(torch.stack([losses[t] for t in tasks])), param)
    torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-7)


def test_one_task_is_its_own_loss() -> None:
    """K = 1 (a per-task step): no perpendicular distance, so the weight is the direction's, 1."""
    method = _setup(theta=5.0)
    ctx = StepContext(step=0, backward=lambda total: None, loss_values={"b": 0.7})
    assert method.weights({"b": torch.tensor(0.7)}, ctx) == {"b": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"theta": -1.0}, "theta must be >= 0"),
        ({"reference": [0.0, 1.0]}, "reference has 2 values for 3 tasks"),
        ({"reference": [0.0, float("nan"), 1.0]}, "reference must be finite"),
        ({"preference": {"a": 1.0}}, r"missing: \['b', 'c'\]"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _setup(**kwargs)
