"""Layer-wise Gramians (core/balancing/layers.py): exact against one backward per task."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from core.balancing import BalancerSetup, StepContext, build, layers
from core.balancing.layers import Layer, Recorder, plan, sample_gramian, sample_rows

TASKS = ["a", "b", "c"]


class Net(nn.Module):
    def __init__(self, trunk: Callable[[], nn.Module], width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = trunk()
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS})

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()


def mlp(inplace: bool = False) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(inplace=inplace), nn.Linear(64, 32))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 64, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(64, 64, (3, 1), padding=(1, 0)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 32),
    )


def grouped_cnn() -> nn.Module:
    """A grouped conv (4 groups) and a depthwise one (one group per channel), as in MobileNets."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 64, 3, stride=2, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 32),
    )


def step(model: Net, balancer: Any, x: Tensor, calls: int = 1, scaler: Any = None) -> None:
    """One micro-step: ``calls`` trunk calls (sources) on slices of x, every task on each."""
    model.zero_grad()
    zs = [model.backbone(x[i::calls]) for i in range(calls)]
    losses = {t: sum((model.heads[t](z) ** 2).mean() * (k + 1) for z in zs) for k, t in enumerate(TASKS)}
    values = {t: float(v.detach()) for t, v in losses.items()}
    balancer.backward(
        losses, StepContext(step=0, backward=lambda v: v.backward(), loss_values=values, model=model, scaler=scaler)
    )  # type: ignore[arg-type]


def train(trunk: Callable[[], nn.Module], engine: str, x: Tensor, calls: int = 1, **kw: Any) -> tuple[Tensor, Any]:
    model = Net(trunk)
    balancer = build({"name": "upgrad", "space": "params", "engine": engine})
    balancer.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1, model=model))
    step(model, balancer, x, calls, **kw)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), balancer.autograd


CASES = {
    "mlp": (mlp, torch.randn(8, 64, generator=torch.Generator().manual_seed(1)), 1),
    "mlp, two calls": (mlp, torch.randn(8, 64, generator=torch.Generator().manual_seed(1)), 2),
    "cnn": (cnn, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), 1),
    "grouped cnn": (grouped_cnn, torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)), 1),
}


@pytest.mark.parametrize("case", CASES)
def test_gramian_and_update_equal_one_backward_per_task(case: str) -> None:
    trunk, x, calls = CASES[case]
    grads, engine = train(trunk, "gramian", x, calls)
    expected, reference = train(trunk, "loop", x, calls)
    assert engine.last_activation_params > 0  # the layer path ran
    assert reference.last_activation_params == 0
    assert torch.allclose(engine.last_gramian, reference.last_gramian, rtol=1e-5, atol=1e-9)
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-8)


def test_grouped_convs_take_their_gramian_from_activations() -> None:
    trunk, x, _ = CASES["grouped cnn"]
    _, engine = train(trunk, "gramian", x)
    grouped = [m for m in trunk().modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert engine.last_activation_params >= sum(p.numel() for m in grouped for p in m.parameters())


def test_amp_scale_is_undone_on_the_layer_path() -> None:
    trunk, x, _ = CASES["mlp"]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    grads, engine = train(trunk, "gramian", x, scaler=scaler)
    expected, reference = train(trunk, "loop", x, scaler=scaler)
    assert engine.last_activation_params > 0
    assert torch.allclose(engine.last_gramian, reference.last_gramian, rtol=1e-5)
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-6)


def test_a_layer_whose_output_is_changed_in_place_is_taken_at_its_own_output() -> None:
    """After ``ReLU(inplace=True)`` the output tensor's gradient would be the ReLU's: the gradient is
    taken at the edge the Linear's call returned, so both layers are taken and the result is exact."""
    x = CASES["mlp"][1]
    grads, engine = train(lambda: mlp(inplace=True), "gramian", x)
    expected, _ = train(lambda: mlp(inplace=True), "loop", x)
    assert engine.last_activation_params == (64 * 64 + 64) + (64 * 32 + 32)
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-8)


def test_forwards_the_losses_do_not_depend_on_are_dropped() -> None:
    model = Net(mlp)
    recorder = Recorder(model, model.shared_parameters())
    x = CASES["mlp"][1]
    model.backbone(x).sum().backward()  # another user's step
    with torch.no_grad():
        model.backbone(x)  # not recorded at all
    loss = model.backbone(x).sum()
    layers = recorder.take([loss])
    assert [len(layer.outputs) for layer in layers] == [1, 1]
    assert recorder.take([loss]) == []  # handed over once


def test_tied_and_subclassed_layers_are_left_to_the_direct_path() -> None:
    class Scaled(nn.Linear):  # a subclass may compute something else with its weight
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), Scaled(8, 8)
            self.b.weight = self.a.weight

    model = Tied()
    assert Recorder(model, model.parameters()).layers == {}


class Reread(nn.Module):
    """A shared Linear whose weight the losses also read outside its call: a tied decoder
    ``F.linear(h, W.t())`` or a penalty on the weight."""

    def __init__(self, penalty: bool) -> None:
        super().__init__()
        self.enc, self.out, self.penalty = nn.Linear(64, 32), nn.Linear(64, 32), penalty

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.enc(x))
        if self.penalty:  # an orthogonality penalty riding on the representation
            return self.out(x) + h + 1e-3 * (self.enc.weight @ self.enc.weight.T).trace()
        return self.out(torch.nn.functional.linear(h, self.enc.weight.t()))  # the tied decoder


@pytest.mark.parametrize("penalty", [False, True], ids=["tied decoder", "weight penalty"])
def test_a_weight_read_outside_its_calls_stays_direct(penalty: bool) -> None:
    """The activations of ``enc``'s call miss the other reads of its weight (a 21 % Gramian and 36 %
    update error before): that layer goes to the exact per-task gradients, ``out`` still does not."""
    x = CASES["mlp"][1]
    grads, engine = train(lambda: Reread(penalty), "gramian", x)
    expected, reference = train(lambda: Reread(penalty), "loop", x)
    assert engine.last_activation_params == 64 * 32 + 32  # ``out`` only
    assert torch.allclose(engine.last_gramian, reference.last_gramian, rtol=1e-5, atol=1e-9)
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-8)


def test_plan_takes_few_positions_and_many_channels_only() -> None:
    """ResNet-18's shapes at 64x64, batch 32: the last stage (128 positions, 512 channels) comes
    from activations, the first (8192 positions, 64 channels) keeps its weight gradients."""

    def layer(positions: int, channels: int) -> Layer:
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        side = int((positions // 32) ** 0.5)
        out = torch.empty(32, channels, side, side, device="meta")
        return Layer(conv, [out], [out], [0])

    late, early = layer(128, 512), layer(8192, 64)
    assert plan([late, early], k=3) == [late]
    assert plan([late], k=1) == []  # one task: K weight gradients are already the cheapest


def test_a_compiled_model_keeps_the_direct_path() -> None:
    x = CASES["mlp"][1]

    def compiled() -> nn.Module:
        trunk = mlp()
        trunk.compile(backend="eager")
        return trunk

    grads, engine = train(compiled, "gramian", x)
    expected, _ = train(mlp, "loop", x)
    assert engine.last_activation_params == 0
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-8)


def test_a_deep_copy_of_the_model_records_nothing() -> None:
    """``JointModel.subset`` deep-copies modules with their hooks: the copy's forwards must not pile
    up records that no engine takes."""
    model = Net(mlp)
    recorder = Recorder(model, model.shared_parameters())
    twin = copy.deepcopy(model)
    out = twin.backbone(CASES["mlp"][1])
    alive = weakref.ref(out)
    del out
    gc.collect()
    assert alive() is None  # nothing holds the copy's activations
    assert all(not layer.outputs for layer in recorder.layers.values())
    del recorder  # a dropped engine leaves inert hooks
    model.backbone(CASES["mlp"][1])


def test_a_model_not_given_at_setup_is_hooked_at_its_first_step() -> None:
    trunk, x, _ = CASES["mlp"]
    model = Net(trunk)
    balancer = build({"name": "upgrad", "space": "params"})
    balancer.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
    step(model, balancer, x)
    assert balancer.autograd.last_activation_params == 0  # its forward ran before the hooks
    step(model, balancer, x)
    assert balancer.autograd.last_activation_params > 0


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), (5, 3, 7, 7)),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), (5, 4, 6, 6)),
        (nn.Conv2d(4, 4, 3, groups=4, bias=False), (5, 4, 6, 6)),  # depthwise
        (nn.Linear(7, 4), (5, 3, 7)),
        (nn.Linear(7, 4), (5, 7)),
        (nn.GroupNorm(2, 4), (5, 4, 6, 6)),
        (nn.InstanceNorm2d(4, affine=True), (5, 4, 6, 6)),
        (nn.LayerNorm(7), (5, 3, 7)),
        (nn.LayerNorm((3, 7), bias=False), (5, 3, 7)),
    ],
)
def test_per_sample_gramian_both_forms_equal_the_per_sample_jacobian(module: nn.Module, shape: tuple[int, ...]) -> None:
    """Two calls of the layer on the same K samples, one backward of the summed per-sample losses:
    the inner form (P P^T * D D^T summed by sample) and the outer form (K per-sample weight gradients)
    both give the Gramian of the per-sample gradients; a norm's, from its per-sample ``sum D * x_hat``."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():  # not the identity a fresh norm starts as
            p.normal_()
    ys = [module(x), module(x * 0.5)]
    losses = sum(y.flatten(1).pow(2).sum(1) * (i + 1) for i, y in enumerate(ys))
    xs = [x, x * 0.5]
    layer = Layer(module, xs, ys, [0, 0], [None, None])
    ds = list(torch.autograd.grad(losses.sum(), ys, retain_graph=True))
    params = list(module.parameters())
    jac = torch.stack(
        [torch.cat([g.flatten() for g in torch.autograd.grad(v, params, retain_graph=True)]) for v in losses]
    )
    expected = jac @ jac.T
    weight, bias = layers.per_sample_gradients(module, xs, ds, 5)
    assert torch.allclose(weight @ weight.T + (bias @ bias.T if bias is not None else 0), expected, rtol=1e-5)
    if not layers.is_norm(module):
        n = ys[0].numel() // (5 * layers.channels(module))
        rows = torch.cat([layers.patches(module, xi) for xi in xs])
        d = torch.cat([layers.positions(module, g) for g in ds])
        inner = layers.SampleRows(layer, rows, d, torch.arange(5).repeat_interleave(n).repeat(2))
        assert torch.allclose(inner.gramian(5, torch.float64), expected, rtol=1e-5)
    part = sample_rows(layer, ds, 5, 1.0)
    assert torch.allclose(sample_gramian(part, 5), expected, rtol=1e-5)  # whichever form it picks
