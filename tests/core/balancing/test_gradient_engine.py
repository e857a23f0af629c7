"""The per-task gradient engine (rep / params) and its composition with the trainer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from core.balancing import BalancerSetup, NonFiniteGradients, StepContext, build
from core.errors import ConfigError
from core.experiments.run import train
from tests.core.helpers import toy_config

TASKS = ["a", "b", "c"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()


def forward(model: Tiny, tasks: list[str] = TASKS) -> tuple[dict[str, Tensor], Tensor]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
    z = model.backbone(x)
    return {t: ((model.heads[t](z).squeeze(1) - y[:, TASKS.index(t)]) ** 2).mean() for t in tasks}, z


def context(model: Tiny, losses: dict[str, Tensor], z: Tensor, **kw: Any) -> StepContext:
    return StepContext(
        step=0,
        backward=lambda total: total.backward(),
        loss_values={t: float(v.detach()) for t, v in losses.items()},
        model=model,
        features={"src": z},
        source_tasks={"src": list(losses)},
        **kw,
    )


def setup(method: Any) -> Any:
    method.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    return method


def reference_jacobian(model: Tiny, tasks: list[str] = TASKS) -> tuple[Tensor, dict[str, Tensor]]:
    losses, _ = forward(model, tasks)
    shared = list(model.shared_parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]) for t in tasks
    ]
    heads = {n: p for n, p in model.heads.named_parameters()}
    head_grads = dict(
        zip(heads, torch.autograd.grad(sum(losses.values()), list(heads.values()), allow_unused=True), strict=True)
    )
    return torch.stack(rows), head_grads  # type: ignore[return-value]


def flat_grad(params: Iterator[nn.Parameter]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_params_task_gradients_equal_separate_autograd_calls(engine: str) -> None:
    model = Tiny()
    expected, _ = reference_jacobian(model)
    losses, _ = forward(model)
    method = build("mgda", engine=engine)
    grads = method.task_gradients(list(losses.values()), list(model.shared_parameters()))
    jac = torch.cat([g.reshape(3, -1) for g in grads], 1)
    assert torch.allclose(jac, expected, atol=1e-5)
    assert not method._batched_failed


@pytest.mark.parametrize("name", ["mgda", "graddrop"])
def test_params_update_is_the_aggregate_and_heads_get_their_plain_gradient(name: str) -> None:
    model = Tiny()
    jac, head_grads = reference_jacobian(model)
    expected = setup(build(name, seed=0) if name == "graddrop" else build(name)).aggregate(jac)
    method = setup(build(name, space="params", seed=0) if name == "graddrop" else build(name, space="params"))
    losses, z = forward(model)
    method.backward(losses, context(model, losses, z, grad_accum=2))
    assert torch.allclose(flat_grad(model.shared_parameters()), expected / 2, atol=1e-6)
    for n, p in model.heads.named_parameters():
        assert torch.allclose(p.grad, head_grads[n] / 2, atol=1e-6)  # type: ignore[arg-type]


def test_rep_update_backpropagates_the_weighted_representation_gradient() -> None:
    model = Tiny()
    losses, z = forward(model)
    rep_jac = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in TASKS])
    w = build("upgrad").weights((rep_jac @ rep_jac.T).double()).float()
    expected = torch.autograd.grad(z, list(model.shared_parameters()), (w @ rep_jac).view_as(z), retain_graph=True)
    _, head_grads = reference_jacobian(model)
    method = setup(build("upgrad", space="rep"))
    weights = method.backward(losses, context(model, losses, z))
    assert torch.allclose(flat_grad(model.shared_parameters()), torch.cat([g.reshape(-1) for g in expected]), atol=1e-6)
    assert torch.allclose(torch.tensor(list(weights.values())), w, atol=1e-6)
    for n, p in model.heads.named_parameters():
        assert torch.allclose(p.grad, head_grads[n], atol=1e-6)  # type: ignore[arg-type]
    cos = method.diagnostics()
    assert set(cos) == {"cos/a/b", "cos/a/c", "cos/b/c"}
    normed = rep_jac / rep_jac.norm(dim=1, keepdim=True)
    assert abs(cos["cos/a/b"] - float(normed[0] @ normed[1])) < 1e-5


def test_missing_tasks_and_amp_scaling() -> None:
    """K varies (task 'b' absent); a GradScaler's scale is undone before aggregation."""
    model = Tiny()
    jac, _ = reference_jacobian(model, ["a", "c"])
    expected = build("mgda").aggregate(jac)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, z = forward(model, ["a", "c"])
    weights = setup(build("mgda")).backward(losses, context(model, losses, z, scaler=scaler))
    assert set(weights) == {"a", "c"}
    assert torch.allclose(flat_grad(model.shared_parameters()) / 1024.0, expected, atol=1e-6)


def test_nonfinite_gradients_are_refused() -> None:
    model = Tiny()
    losses, z = forward(model)
    losses["b"] = losses["b"] * torch.tensor(float("nan"))
    with pytest.raises(NonFiniteGradients) as e:
        setup(build("pcgrad", space="rep")).backward(losses, context(model, losses, z))
    assert "b" in e.value.values


def _train_records(tmp_path: Any, **overrides: Any) -> list[dict[str, Any]]:
    cfg = toy_config(tmp_path, **{"train.max_steps": 6, "train.eval_every": 0, "train.log_every": 3, **overrides})
    train(cfg)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_trainer_rep_logs_weights_and_cosines(tmp_path: Any) -> None:
    records = _train_records(tmp_path, balancing={"name": "mgda", "space": "rep"}, **{"train.grad_accum": 2})
    last = records[-1]
    assert {"weight/digit", "weight/parity", "cos/digit/parity"} <= set(last)
    assert abs(last["weight/digit"] + last["weight/parity"] - 1) < 1e-6  # MGDA weights lie on the simplex


def test_trainer_params_in_the_one_dataset_per_task_regime(tmp_path: Any) -> None:
    records = _train_records(
        tmp_path,
        balancing={"name": "gradvac", "space": "params"},
        **{"data.regime": "per_task", "train.clip_grad_norm": 1.0},
    )
    assert "cos/digit/parity" in records[-1] and "grad_norm" in records[-1]


def test_trainer_refuses_rep_with_several_sources(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="use space 'params'"):
        _train_records(tmp_path, balancing={"name": "mgda", "space": "rep"}, **{"data.regime": "per_task"})
