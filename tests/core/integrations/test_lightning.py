"""BalancedModule in a real ``lightning.Trainer`` (CPU) against a plain loop with the functional API."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from core.balancing import LoopBalancer  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.integrations.lightning import BalancedModule  # noqa: E402

STEPS, BATCH, LR = 3, 8, 0.1


class TwoTasks(BalancedModule):
    """A shared MLP with a classification and a regression head (float64, so the comparison is exact)."""

    def __init__(self, method: str, space: str | None) -> None:
        super().__init__()
        self.method, self.space = method, space
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.head_a, self.head_b = nn.Linear(8, 3), nn.Linear(8, 1)
        self.balancer = LoopBalancer(method, shared=self.backbone, space=space, tasks=["a", "b"])

    def losses(self, batch: list[Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        x, y_a, y_b = batch
        h = self.backbone(x)
        return {"a": F.cross_entropy(self.head_a(h), y_a), "b": F.mse_loss(self.head_b(h).squeeze(1), y_b)}, h

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        losses, h = self.losses(batch)
        return self.balance(losses, features=h if self.space == "rep" else None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def built(method: str, space: str | None) -> TwoTasks:
    torch.manual_seed(0)
    return TwoTasks(method, space).double()


def data(dtype: torch.dtype = torch.float64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    n = STEPS * BATCH
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    return TensorDataset(x, torch.randint(0, 3, (n,), generator=g), torch.randn(n, generator=g, dtype=dtype))


def fit(model: pl.LightningModule, dtype: torch.dtype = torch.float64, **trainer_kwargs: Any) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, DataLoader(data(dtype), batch_size=BATCH, shuffle=False))
    return trainer


@pytest.mark.parametrize(
    ("method", "space"),
    [("upgrad", "params"), ("upgrad", "rep"), ("mgda", "params"), ("config", "params")],
)
def test_lightning_update_equals_the_functional_api_in_a_plain_loop(method, space):
    model, reference = built(method, space), built(method, space)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit(model)

    opt = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
    for batch in DataLoader(data(), batch_size=BATCH, shuffle=False):
        opt.zero_grad()
        losses, h = reference.losses(batch)
        reference.balancer.backward(losses, features=h if space == "rep" else None)
        opt.step()

    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name
        assert not torch.equal(p, start[name]), f"{name} did not train"
    assert model.balancer.steps == reference.balancer.steps == STEPS


def test_balancer_state_travels_in_lightning_checkpoints(tmp_path):
    model = built("uw", None)  # learned log-variances: parameters of the balancer, trained by Lightning
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.balancer.state_dict().items()}
    trainer = fit(model)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = built("uw", None)
    restored.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    after = restored.balancer.state_dict()
    assert after.keys() == before.keys() and any("log" in k for k in after)
    for key, value in after.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.equal(value, model.balancer.state_dict()[key]), key
    assert any(not torch.equal(after[k], before[k]) for k in after if "log" in k)  # trained


class Manual(TwoTasks):
    """Manual optimisation: ``manual_backward`` goes through the same backward hook."""

    def __init__(self, method: str, space: str | None) -> None:
        super().__init__(method, space)
        self.automatic_optimization = False

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        opt = self.optimizers()
        opt.zero_grad()  # type: ignore[union-attr]
        losses, _ = self.losses(batch)
        total = self.balance(losses)
        self.manual_backward(total)
        opt.step()  # type: ignore[union-attr]
        return total


def reference_run(model: TwoTasks, scaler: torch.amp.GradScaler | None = None) -> None:
    opt = model.configure_optimizers()
    dtype = torch.float64 if scaler is None else torch.float32
    for batch in DataLoader(data(dtype), batch_size=BATCH, shuffle=False):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            losses, _ = model.losses(batch)
        model.balancer.backward(losses, scaler=scaler)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()


def test_manual_optimisation_runs_the_same_update():
    torch.manual_seed(0)
    model = Manual("upgrad", "params").double()
    reference = built("upgrad", "params")
    fit(model)
    reference_run(reference)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_fp16_mixed_precision_hands_lightnings_scaler_to_the_balancer():
    """Lightning's 16-mixed plugin (on the CPU: float16 autocast and a CPU GradScaler) gives the
    update of a plain loop that passes the same kind of scaler to the balancer."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    model = TwoTasks("upgrad", "params")
    torch.manual_seed(0)
    reference = TwoTasks("upgrad", "params")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    fit(model, torch.float32, plugins=[plugin])
    reference_run(reference, scaler)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert model.trainer.precision_plugin.scaler.get_scale() == scaler.get_scale()


class ReturnsItsOwnLoss(TwoTasks):
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        losses, _ = self.losses(batch)
        return sum(losses.values())  # type: ignore[return-value]


def test_a_training_step_that_bypasses_balance_is_named():
    with pytest.raises(ConfigError, match=r"must return self.balance"):
        fit(ReturnsItsOwnLoss("upgrad", "params").double())


def test_gradient_accumulation_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"accumulate_grad_batches=2.*larger batch"):
        fit(TwoTasks("upgrad", "params").double(), accumulate_grad_batches=2)


def test_a_method_that_learns_after_the_optimizer_step_is_refused():
    with pytest.raises(ConfigError, match=r"FAMO learns from the losses after each optimizer step"):
        fit(TwoTasks("famo", None).double())
