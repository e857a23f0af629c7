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
from tests.core.helpers import build_trainer, toy_config

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


@pytest.mark.parametrize("engine", ["batched", "loop", "gramian"])
def test_params_task_gradients_equal_separate_autograd_calls(engine: str) -> None:
    model = Tiny()
    expected, _ = reference_jacobian(model)
    losses, _ = forward(model)
    method = build("mgda", engine=engine)
    grads = method.autograd.task_gradients(list(losses.values()), list(model.shared_parameters()))
    jac = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in grads])
    assert torch.allclose(jac, expected, atol=1e-5)
    assert not method.autograd.batched_failed


def test_auto_never_picks_the_vmap_engine() -> None:
    """vmap is faster on MLPs and small CNNs, slower on norm-heavy CNNs (docs/balancing.md): opt-in."""
    assert build("upgrad").autograd.engine == "gramian"
    assert build("graddrop").autograd.engine == "loop"
    assert build("upgrad", engine="batched").autograd.engine == "batched"


def test_batched_engine_does_not_swallow_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Tiny()
    losses, _ = forward(model)
    real = torch.autograd.grad

    def oom(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("materialize_grads"):  # the vmapped call
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", oom)
    method = build("mgda", engine="batched")
    with pytest.raises(torch.OutOfMemoryError):
        method.autograd.task_gradients(list(losses.values()), list(model.shared_parameters()))
    assert not method.autograd.batched_failed


@pytest.mark.parametrize(("name", "engine"), [("mgda", "gramian"), ("mgda", "loop"), ("graddrop", "loop")])
def test_params_update_is_the_aggregate_and_heads_get_their_plain_gradient(name: str, engine: str) -> None:
    model = Tiny()
    jac, head_grads = reference_jacobian(model)
    expected = build(name).aggregate(jac)
    method = setup(build(name, space="params", engine=engine))
    losses, z = forward(model)
    method.backward(losses, context(model, losses, z))
    assert torch.allclose(flat_grad(model.shared_parameters()), expected, atol=1e-6)
    for n, p in model.heads.named_parameters():
        assert torch.allclose(p.grad, head_grads[n], atol=1e-6)  # type: ignore[arg-type]
    assert method.synchronised_parameters() == []  # one process: nothing to skip


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


class Nested(Tiny):
    """Token states and a pooled output computed from them (a transformers encoder's pooler)."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = nn.Linear(6, 6)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.backbone.parameters()
        yield from self.pooler.parameters()


def nested_forward(model: Nested) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
    tokens = model.backbone(x)
    pooled = torch.tanh(model.pooler(tokens))
    heads_in = {"a": tokens, "b": pooled, "c": pooled}
    losses = {t: ((model.heads[t](heads_in[t]).squeeze(1) - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}
    return losses, tokens, pooled


@pytest.mark.parametrize("name", ["mgda", "upgrad"])
def test_rep_with_nested_features_is_not_double_counted(name: str) -> None:
    """Gradients w.r.t. both the token states and the pooled output counted the pooled path twice."""
    model = Nested()
    losses, tokens, pooled = nested_forward(model)
    ctx = context(model, losses, tokens)
    ctx.features = {"src": {"tokens": tokens, "pooled": pooled}}
    weights = setup(build(name, space="rep")).backward(losses, ctx)
    losses, _, _ = nested_forward(model)
    shared = list(model.shared_parameters())
    expected = torch.autograd.grad(sum(weights[t] * losses[t] for t in TASKS), shared)  # the applied combination
    assert torch.allclose(flat_grad(iter(shared)), torch.cat([e.reshape(-1) for e in expected]), atol=1e-6)


def test_rep_aggregator_refuses_nested_features() -> None:
    model = Nested()
    losses, tokens = forward(model)
    pooled = model.pooler(tokens)
    ctx = context(model, losses, tokens)
    ctx.features = {"src": [tokens, pooled]}
    with pytest.raises(ConfigError, match="nested features"):
        setup(build("graddrop", space="rep")).backward(losses, ctx)


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


def test_huge_finite_task_gradients_are_balanced_not_summed() -> None:
    """|g|^2 overflows float32 but g does not: the Gramian is still exact (float64 retry), so the
    step is the method's, not the plain sum that the fp16 scaler would then happily apply."""
    model = Tiny()
    scale = torch.tensor([1.0, 1e20, 1.0])
    jac, _ = reference_jacobian(model)
    expected = build("mgda").aggregate(jac.double() * scale.double()[:, None]).float()
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    for space in ("params", "rep"):
        for p in model.parameters():
            p.grad = None
        losses, z = forward(model)
        losses = {t: v * scale[i] for i, (t, v) in enumerate(losses.items())}
        setup(build("mgda", space=space)).backward(losses, context(model, losses, z, scaler=scaler))
        if space == "params":
            assert torch.allclose(flat_grad(model.shared_parameters()), expected, rtol=1e-4, atol=1e-6)
        assert torch.isfinite(flat_grad(model.shared_parameters())).all()


def test_fp16_overflow_makes_the_scaler_skip_and_back_off() -> None:
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, z = forward(model)
    losses["b"] = losses["b"] * torch.tensor(float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    assert setup(build("upgrad")).backward(losses, context(model, losses, z, scaler=scaler)) == {}
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() < 1024.0


def test_nonfinite_gradients_are_refused() -> None:
    model = Tiny()
    losses, z = forward(model)
    losses["b"] = losses["b"] * torch.tensor(float("nan"))
    for space in ("rep", "params"):
        with pytest.raises(NonFiniteGradients) as e:
            setup(build("pcgrad", space=space)).backward(losses, context(model, losses, z))
        assert set(e.value.values) == {"b"}


def _train_records(tmp_path: Any, **overrides: Any) -> list[dict[str, Any]]:
    cfg = toy_config(tmp_path, **{"train.max_steps": 6, "train.eval_every": 0, "train.log_every": 3, **overrides})
    train(cfg)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_rep_space_records_no_activations(tmp_path: Any) -> None:
    """Only the ``params`` Gramian engine takes the recorder's records: in ``rep`` nothing may
    record (MGDA held 2 -> 120 recorded calls over 60 steps, ~0.6 GB a step on a ResNet-18)."""
    config = toy_config(tmp_path, **{"balancing": {"name": "mgda", "space": "rep"}, "train.device": "cpu"})
    trainer = build_trainer(config, out_dir=None)
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
    recorder = trainer.balancer.autograd.recorder
    assert recorder is None or not any(layer.outputs for layer in recorder.layers.values())


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


def test_imtl_balances_the_gradients_of_learned_loss_scales() -> None:
    """IMTL = IMTL-G on e^(s_k) L_k; s_k follow d/ds (e^s L - s) = e^s l - 1 from the loss values."""
    model = Tiny()
    method = setup(build("imtl"))
    assert repr(method) == "GradientBalancer(IMTLG(), space='params', engine='auto', loss_scales=True)"
    with torch.no_grad():
        for i, t in enumerate(TASKS):
            method.log_scales[t].fill_(0.5 * (i - 1))
    factors = torch.exp(torch.tensor([-0.5, 0.0, 0.5]))
    jac, head_grads = reference_jacobian(model)
    expected = build("imtl_g").aggregate(jac * factors[:, None])
    losses, z = forward(model)
    values = {t: float(v.detach()) for t, v in losses.items()}
    method.backward(losses, context(model, losses, z))
    assert torch.allclose(flat_grad(model.shared_parameters()), expected, atol=1e-6)
    for i, t in enumerate(TASKS):
        assert torch.allclose(model.heads[t].weight.grad, head_grads[f"{t}.weight"] * factors[i], atol=1e-6)  # type: ignore[arg-type]
        assert abs(float(method.log_scales[t].grad) - (float(factors[i]) * values[t] - 1)) < 1e-6  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["gramian", "batched"])
def test_gramian_engine_writes_gradients_that_own_their_memory(engine: str) -> None:
    """The update of a Jacobian block is one vector, each gradient a view of its slice: together they
    hold exactly their own size, never the K task rows."""
    model = Tiny()
    losses, z = forward(model)
    setup(build("upgrad", engine=engine)).backward(losses, context(model, losses, z))
    grads = [p.grad for p in model.shared_parameters()]
    storages = {g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads}  # type: ignore[union-attr]
    assert sum(storages.values()) == sum(g.numel() * g.element_size() for g in grads)  # type: ignore[union-attr]
