"""The functional API against a slow reference: per-task autograd.grad, the concatenated Jacobian,
the pure method's ``aggregate``; on data where shortcuts stop being exact (a shared layer one loss
does not reach, a head read by two losses, per-sample losses, float64, an fp16 scaler)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from core.balancing import METHODS, LoopBalancer, NonFiniteGradients, backward
from core.errors import ConfigError, DataError


class Net(nn.Module):
    """A trunk and a side branch (shared; only loss ``c`` reads the side), a head read by ``a`` and ``b``."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.side = nn.Linear(5, 6)
        self.ab = nn.Linear(6, 2)
        self.c = nn.Linear(6, 1)
        self.to(dtype)

    def shared(self) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), *self.side.parameters()]

    def heads(self) -> list[nn.Parameter]:
        return [*self.ab.parameters(), *self.c.parameters()]

    def losses(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        z = self.trunk(x)
        ab = self.ab(z)
        c = self.c(z + self.side(x)).squeeze(1)
        losses = {
            "a": ((ab[:, 0] - y[:, 0]) ** 2).mean(),
            "b": (ab[:, 1] - y[:, 1]).abs().mean(),
            "c": ((c - y[:, 2]) ** 2).mean(),
        }
        return losses, z


def data(n: int = 16, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def jacobian(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """The slow reference: one autograd.grad per loss, zeros where a loss does not reach a parameter."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
            )
        )
    return torch.stack(rows)


def reference(name: str, losses: dict[str, Tensor], shared: list[Tensor], others: list[Tensor]) -> Tensor:
    """Every gradient the balanced backward should write: the method's update on the shared
    parameters, the plain sum of gradients on the others."""
    values = torch.stack([v.detach() for v in losses.values()])
    update = METHODS[name]().aggregate(jacobian(list(losses.values()), shared), values)
    return torch.cat([update, jacobian([sum(losses.values())], others)[0]])  # type: ignore[list-item]


def grads(params: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        *[("upgrad", "auto"), ("upgrad", "loop"), ("upgrad", "batched"), ("mgda", "auto"), ("cagrad", "auto")],
        *[("dualproj", "auto"), ("config", "auto"), ("config", "batched")],
    ],
)
def test_params_space_equals_the_reference(name: str, engine: str) -> None:
    model, (x, y) = Net(), data()
    losses, _ = model.losses(x, y)
    expected = reference(name, losses, model.shared(), model.heads())
    losses, _ = model.losses(x, y)
    weights = backward(losses, shared=model.shared(), method=name, engine=engine)
    assert set(weights) == {"a", "b", "c"}
    assert torch.allclose(grads(model.shared() + model.heads()), expected, atol=1e-10)


def test_gradients_accumulate_into_existing_grad_like_loss_backward() -> None:
    model, (x, y) = Net(), data()
    losses, _ = model.losses(x, y)
    expected = reference("upgrad", losses, model.shared(), model.heads())
    before = [torch.randn_like(p) for p in model.parameters()]
    for p, b in zip(model.parameters(), before, strict=True):
        p.grad = b.clone()
    losses, _ = model.losses(x, y)
    backward(losses, shared=model.shared())
    assert torch.allclose(
        grads(model.shared() + model.heads()) - torch.cat([b.reshape(-1) for b in before]), expected, atol=1e-10
    )


@pytest.mark.parametrize("name", ["upgrad", "mgda", "config"])
def test_rep_space_equals_the_reference(name: str) -> None:
    """Space ``rep``: the method sees the gradients w.r.t. the features; the shared parameters get
    the backward of its update through the features (here the trunk; ``c`` reads only z)."""
    model, (x, y) = Net(), data()
    losses, z = model.losses(x, y)
    losses["c"] = ((model.c(z).squeeze(1) - y[:, 2]) ** 2).mean()
    trunk = list(model.trunk.parameters())
    values = torch.stack([v.detach() for v in losses.values()])
    update = METHODS[name]().aggregate(jacobian(list(losses.values()), [z]), values)
    expected = torch.autograd.grad(z, trunk, update.view_as(z), retain_graph=True)
    heads = jacobian([sum(losses.values())], model.heads())[0]  # type: ignore[list-item]
    backward(losses, shared=model.trunk, features=z, method=name)
    assert torch.allclose(grads(trunk), torch.cat([g.reshape(-1) for g in expected]), atol=1e-10)
    assert torch.allclose(grads(model.heads()), heads, atol=1e-12)
    assert model.side.weight.grad is None  # not reached by any loss


def test_positional_losses_return_a_weight_tensor() -> None:
    model, (x, y) = Net(), data()
    losses, _ = model.losses(x, y)
    named = backward(losses, shared=model.shared())
    model.zero_grad()
    losses, _ = model.losses(x, y)
    ordered = backward(list(losses.values()), shared=model.shared())
    assert isinstance(ordered, Tensor) and ordered.dtype == torch.float64
    assert ordered.tolist() == pytest.approx(list(named.values()))  # type: ignore[union-attr]


def test_loss_space_method_is_one_plain_backward() -> None:
    model, (x, y) = Net(), data()
    losses, _ = model.losses(x, y)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    expected = grads(list(model.parameters()))
    model.zero_grad()
    losses, _ = model.losses(x, y)
    assert backward(losses, shared=model.shared(), method="ew") == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert torch.equal(grads(list(model.parameters())), expected)


def per_sample_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))


def test_per_sample_losses_take_layer_gramians_from_activations() -> None:
    """K = batch size: the Gramian of the per-sample gradients, the big layers' share from their
    inputs and output gradients (no per-sample weight gradient is formed), equals the reference."""
    net = per_sample_net()
    trunk, head = net[:4], net[4]
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 64, generator=g), torch.randn(8, generator=g)
    balancer = LoopBalancer("upgrad", shared=trunk)  # hooks on before the first forward
    for _ in range(2):  # and the state of a growing set of rows holds across calls
        net.zero_grad()
        losses = (net(x).squeeze(1) - y) ** 2
        expected = reference("upgrad", dict(enumerate(losses)), list(trunk.parameters()), list(head.parameters()))  # type: ignore[arg-type]
        net.zero_grad()
        losses = (net(x).squeeze(1) - y) ** 2
        weights = balancer.backward(losses)
        assert isinstance(weights, Tensor) and weights.shape == (8,)
        assert balancer.balancer.autograd.last_activation_params > 0  # type: ignore[union-attr]
        assert torch.allclose(grads(list(net.parameters())), expected, rtol=1e-4, atol=1e-6)


def test_fp16_scaler_scales_the_update_and_skips_on_overflow() -> None:
    model, (x, y) = Net(torch.float32), data(dtype=torch.float32)
    losses, _ = model.losses(x, y)
    expected = reference("upgrad", losses, model.shared(), model.heads())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, _ = model.losses(x, y)
    backward(losses, shared=model.shared(), scaler=scaler)
    assert torch.allclose(grads(model.shared() + model.heads()) / 1024.0, expected, rtol=1e-5, atol=1e-6)
    model.zero_grad()
    losses, _ = model.losses(x, y)
    losses["b"] = losses["b"] * torch.tensor(float("inf"))
    assert backward(losses, shared=model.shared(), scaler=scaler) == {}  # skipped: the scaler sees inf
    assert not bool(torch.isfinite(model.shared()[0].grad).all())  # type: ignore[arg-type]
    losses, _ = model.losses(x, y)
    losses["b"] = losses["b"] * torch.tensor(float("nan"))
    with pytest.raises(NonFiniteGradients) as e:
        backward(losses, shared=model.shared())
    assert set(e.value.values) == {"b"}


def test_state_survives_a_checkpoint() -> None:
    """GradVac keeps an EMA of pairwise cosines: a balancer restored from another's state_dict
    continues exactly as the original does."""
    model, (x, y) = Net(), data()
    first = LoopBalancer("gradvac", shared=model.shared(), tasks=["a", "b", "c"])
    losses, _ = model.losses(x, y)
    first.backward(losses)
    second = LoopBalancer("gradvac", shared=model.shared(), tasks=["a", "b", "c"])
    second.load_state_dict(first.state_dict())
    out = []
    for balancer in (first, second):
        model.zero_grad()
        losses, _ = model.losses(x * 0.5, y)
        out.append((balancer.backward(losses), grads(model.shared())))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1])
    assert set(first.diagnostics()) == {"cos/a/b", "cos/a/c", "cos/b/c"}


def test_famo_learns_from_the_losses_after_the_step() -> None:
    model, (x, y) = Net(), data()
    balancer = LoopBalancer("famo", shared=model.trunk, tasks=["a", "b", "c"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        balancer.backward(model.losses(x, y)[0])
        optimizer.step()
        with torch.no_grad():
            balancer.after_step(lambda: model.losses(x, y)[0])
    assert balancer.steps == 2 and len(set(balancer.last_weights.values())) == 3  # type: ignore[union-attr]
    restored = LoopBalancer("famo", shared=model.trunk, tasks=["a", "b", "c"])
    restored.load_state_dict(balancer.state_dict())
    assert restored.steps == 2


def test_learned_loss_weights_are_module_parameters() -> None:
    model = Net()
    balancer = LoopBalancer("uw", shared=model.trunk, tasks=["a", "b", "c"])
    assert len(list(balancer.parameters())) == 3  # for the user's optimizer
    losses, _ = model.losses(*data())
    balancer.backward(losses)
    assert all(p.grad is not None for p in balancer.parameters())
    with pytest.raises(ConfigError, match="tasks=\\["):
        balancer.backward({"d": losses["a"]})


@pytest.mark.parametrize(
    ("losses", "match"),
    [
        (lambda z: z.sum(1), "1-D"),
        (lambda z: torch.zeros((2, 2)), "1-D"),
        (lambda z: {"a": z.sum(0)}, "scalar"),
        (lambda z: {"a": z.detach().sum()}, "does not require grad"),
        (lambda z: {}, "no losses"),
    ],
)
def test_bad_losses_are_refused(losses, match: str) -> None:  # type: ignore[no-untyped-def]
    model = Net()
    z = model.trunk(data()[0]).unsqueeze(2)
    given = losses(z)
    with pytest.raises(DataError, match=match):
        backward(given, shared=model.trunk)


def test_bad_arguments_are_refused() -> None:
    model = Net()
    with pytest.raises(ConfigError, match="balances losses"):
        LoopBalancer("ew", shared=model.trunk, engine="loop")
    with pytest.raises(ConfigError, match="unknown gradient engine"):
        LoopBalancer("upgrad", shared=model.trunk, engine="fast")
    with pytest.raises(ConfigError, match="shared"):
        LoopBalancer("upgrad", shared=[])
    losses, _ = model.losses(*data())
    with pytest.raises(ConfigError, match="features"):
        backward(losses, shared=model.trunk, features=torch.zeros(3))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 1),
    )


def norm_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 1))


def in_place_norm_cnn() -> nn.Module:
    """torchvision's pattern: conv, affine norm, in-place activation (whose input is the norm's output)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.GroupNorm(2, 8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise
        nn.InstanceNorm2d(8, affine=True),
        nn.Hardswish(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.ReLU(inplace=True),
        nn.Linear(16, 1),
    )


class Scale(nn.Module):
    """A bare parameter, read outside any Linear / Conv2d / norm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def free_param_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), Scale(32), nn.Tanh(), nn.Linear(32, 1))


INDEPENDENT = {  # net, input, whether one backward serves every shared layer
    "mlp": (per_sample_net, (6, 64), True),
    "cnn": (conv_net, (6, 3, 7, 7), True),
    "layer norm": (norm_net, (6, 64), True),
    "in-place norm cnn": (in_place_norm_cnn, (6, 3, 7, 7), True),
    "free parameter": (free_param_net, (6, 64), False),  # K exact backwards
}


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("case", INDEPENDENT)
def test_independent_samples_take_the_per_sample_gramian_from_one_backward(case: str, amp: bool) -> None:
    make, shape, one = INDEPENDENT[case]
    net = make()
    trunk, head = net[:-1], net[-1]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(*shape, generator=g), torch.randn(shape[0], generator=g)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if amp else None
    balancer = LoopBalancer("upgrad", shared=trunk, independent_samples=True)
    backwards = []
    for _ in range(2):
        net.zero_grad()
        expected = reference(
            "upgrad", dict(enumerate((net(x).squeeze(1) - y) ** 2)), list(trunk.parameters()), list(head.parameters())
        )  # type: ignore[arg-type]
        net.zero_grad()
        out = net(x)
        out.register_hook(backwards.append)
        balancer.backward((out.squeeze(1) - y) ** 2, scaler=scaler)
        scale = 256.0 if amp else 1.0
        assert torch.allclose(grads(list(net.parameters())) / scale, expected, rtol=1e-4, atol=1e-6)
    assert len(backwards) == (2 if one else 2 * shape[0])  # one backward per call, or one per sample
    covered = balancer.balancer.autograd.last_activation_params  # type: ignore[union-attr]
    assert (covered == sum(p.numel() for p in trunk.parameters())) == one
