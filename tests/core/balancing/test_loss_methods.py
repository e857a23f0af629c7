"""Loss-space methods: non-linear methods use the losses linearly (exact under DDP), learned scales,
warm-ups, state and devices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from core.balancing import BalancerSetup, StepContext, build

TASKS = ["a", "b", "c"]


def setup(method):  # type: ignore[no-untyped-def]
    method.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    return method


def problem() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, requires_grad=True), torch.randn(3, 12, 5, generator=g), torch.randn(3, 12, generator=g)


def task_losses(theta: Tensor, x: Tensor, y: Tensor, rows: slice = slice(None)) -> dict[str, Tensor]:
    return {t: ((x[i, rows] @ theta - y[i, rows]) ** 2).mean() + 0.1 for i, t in enumerate(TASKS)}


def context(values: dict[str, float]) -> StepContext:
    return StepContext(step=0, backward=lambda total: total.backward(), loss_values=values)


def famo_loss(losses: dict[str, Tensor], z: Tensor, eps: float = 1e-8) -> Tensor:
    stacked = torch.stack([losses[t] for t in TASKS]) + eps
    c = (z / stacked).sum().detach()
    return (torch.log(stacked) * z / c).sum()


def gls_loss(losses: dict[str, Tensor]) -> Tensor:
    return torch.exp(torch.log(torch.stack([losses[t] for t in TASKS])).mean())


@pytest.mark.parametrize("name", ["famo", "gls"])
def test_nonlinear_loss_methods_give_the_formula_gradient_in_one_process(name: str) -> None:
    theta, x, y = problem()
    method = setup(build(name))
    if name == "famo":
        method.logits.copy_(torch.tensor([0.3, -0.2, 0.1]))
    losses = task_losses(theta, x, y)
    values = {t: float(v.detach()) for t, v in losses.items()}
    method.backward(losses, context(values))
    formula = famo_loss(task_losses(theta, x, y), torch.softmax(method.logits, 0)) if name == "famo" else None
    expected = torch.autograd.grad(formula if formula is not None else gls_loss(task_losses(theta, x, y)), theta)[0]
    assert torch.allclose(theta.grad, expected, rtol=1e-5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["famo", "gls", "stch", "uw", "imtl_l", "cosmos", "pbi"])
def test_ddp_shares_sum_to_the_global_gradient(name: str) -> None:
    """Each of two 'ranks' backpropagates its share (its half of the global mean); with the global
    loss values in the context, the averaged gradients are the one-process gradient."""
    theta, x, y = problem()
    global_losses = task_losses(theta, x, y)
    values = {t: float(v.detach()) for t, v in global_losses.items()}
    single = setup(build(name))
    single.backward(global_losses, context(values))
    expected = theta.grad.clone()  # type: ignore[union-attr]
    theta.grad = None
    for rows in (slice(0, 6), slice(6, 12)):
        shares = {t: (v - 0.1) / 2 + 0.05 for t, v in task_losses(theta, x, y, rows).items()}  # share of the mean
        setup(build(name)).backward(shares, context(values))
    assert torch.allclose(theta.grad, expected, rtol=1e-5)  # type: ignore[arg-type]


def test_imtl_l_learns_scales_that_bring_every_scaled_loss_to_one() -> None:
    method = setup(build("imtl_l"))
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.25), "c": torch.tensor(1.0)}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        method.backward(losses, context({t: float(v) for t, v in losses.items()}))
        optimizer.step()
    weights = method.combine(losses, context({}))[1]
    for t, loss in losses.items():
        assert math.isclose(weights[t] * float(loss), 1.0, rel_tol=1e-3)


def test_stch_warms_up_then_weights_the_worst_normalised_task() -> None:
    method = setup(build("stch", mu=0.1, warmup_steps=2))
    first = {"a": 2.0, "b": 1.0, "c": 0.5}
    for _ in range(2):
        assert method.weights({t: torch.tensor(v) for t, v in first.items()}, context(first)) == dict.fromkeys(
            TASKS, 1.0
        )
    now = {"a": 2.0, "b": 1.5, "c": 0.5}  # b has risen by half its scale: the worst normalised task
    weights = method.weights({t: torch.tensor(v) for t, v in now.items()}, context(now))
    scaled = {t: now[t] / first[t] / 0.1 for t in TASKS}
    norm = sum(math.exp(v) for v in scaled.values())
    for t in TASKS:
        assert math.isclose(weights[t], 3 * math.exp(scaled[t]) / norm / first[t], rel_tol=1e-9)
    assert max(weights, key=lambda t: weights[t] * first[t]) == "b"
    restored = setup(build("stch", mu=0.1, warmup_steps=2))
    restored.load_state_dict(method.state_dict())
    assert restored.weights({t: torch.tensor(v) for t, v in now.items()}, context(now)) == weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_famo_keeps_its_state_on_the_logits_device() -> None:
    method = setup(build("famo")).to("cuda")
    losses = {t: torch.tensor(1.0 + i, device="cuda", requires_grad=True) for i, t in enumerate(TASKS)}
    method.backward(losses, context({t: float(v.detach()) for t, v in losses.items()}))
    method.after_step(lambda: {t: 0.5 + i for i, t in enumerate(TASKS)})
    assert method.logits.device.type == "cuda" and method.adam_m.abs().sum() > 0
