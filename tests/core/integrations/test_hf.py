"""BalancedTrainer, a real ``transformers.Trainer`` (CPU), against a plain loop with the functional API."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from core.balancing import LoopBalancer  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.integrations.hf import BALANCER_STATE, BalancedTrainer  # noqa: E402

STEPS, BATCH, SEQ, LR, CLIP = 3, 4, 7, 0.05, 1.0


class TwoHeads(nn.Module):
    """A tiny BERT encoder with a sentiment-like classification head and a regression head."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.encoder = transformers.BertModel(config, add_pooling_layer=False)
        self.head_a, self.head_b = nn.Linear(16, 2), nn.Linear(16, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, label_a: Tensor, label_b: Tensor) -> dict[str, Any]:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        losses = {"a": F.cross_entropy(self.head_a(h), label_a), "b": F.mse_loss(self.head_b(h).squeeze(1), label_b)}
        return {"loss": sum(losses.values()), "losses": losses, "features": h}


class Pairs(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        n = STEPS * BATCH
        self.ids = torch.randint(1, 40, (n, SEQ), generator=g)
        self.mask = (torch.arange(SEQ) < torch.randint(3, SEQ + 1, (n, 1), generator=g)).long()
        self.a, self.b = torch.randint(0, 2, (n,), generator=g), torch.randn(n, generator=g, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "label_a": self.a[i], "label_b": self.b[i]}


def arguments(tmp_path: Any, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "per_device_train_batch_size": BATCH,
        "max_steps": STEPS,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "max_grad_norm": CLIP,
        "train_sampling_strategy": "sequential",
        "remove_unused_columns": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    return transformers.TrainingArguments(**{**kwargs, **overrides})


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


@pytest.mark.parametrize(("method", "space"), [("upgrad", "params"), ("upgrad", "rep"), ("config", "params")])
def test_hf_trainer_update_equals_the_functional_api_in_a_plain_loop(tmp_path, method, space):
    torch.manual_seed(0)
    model = TwoHeads().double()
    reference = copy.deepcopy(model)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    balancer = LoopBalancer(method, shared=model.encoder, space=space)
    optimizer = sgd(model)
    trainer = BalancedTrainer(
        model=model,
        args=arguments(tmp_path, torch_empty_cache_steps=1),  # Trainer's cache clearing runs too
        train_dataset=Pairs(),
        optimizers=(optimizer, None),
        balancer=balancer,
    )
    trainer.train()

    ref_balancer = LoopBalancer(method, shared=reference.encoder, space=space)
    opt = sgd(reference)
    for batch in DataLoader(Pairs(), batch_size=BATCH, shuffle=False):
        opt.zero_grad()
        out = reference(**batch)
        ref_balancer.backward(out["losses"], features=out["features"] if space == "rep" else None)
        torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
        opt.step()

    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, start[f"encoder.{n}"]) for n, p in model.encoder.named_parameters())
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_balancer_state_is_saved_beside_the_optimizer(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads().double()
    trainer = BalancedTrainer(
        model=model,
        args=arguments(tmp_path, save_strategy="steps", save_steps=STEPS),
        train_dataset=Pairs(),
        balancer=LoopBalancer("upgrad", shared=model.encoder),
    )
    trainer.train()
    saved = torch.load(tmp_path / f"checkpoint-{STEPS}" / BALANCER_STATE, weights_only=True)
    assert saved.keys() == trainer.balancer.state_dict().keys()


def test_gradient_accumulation_is_refused_with_the_fix(tmp_path):
    model = TwoHeads()
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=2.*larger per_device_train_batch_size"):
        BalancedTrainer(
            model=model,
            args=arguments(tmp_path, gradient_accumulation_steps=2),
            train_dataset=Pairs(),
            balancer=LoopBalancer("upgrad", shared=model.encoder),
        )


class NoLosses(TwoHeads):
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"loss": super().forward(*args, **kwargs)["loss"]}


def test_a_model_without_task_losses_is_named(tmp_path):
    model = NoLosses()
    balancer = LoopBalancer("upgrad", shared=model.encoder)
    trainer = BalancedTrainer(model=model, args=arguments(tmp_path), train_dataset=Pairs(), balancer=balancer)
    with pytest.raises(ConfigError, match=r"'losses'.*override BalancedTrainer.task_losses"):
        trainer.train()


def test_learned_balancer_weights_outside_the_model_are_refused(tmp_path):
    model = TwoHeads()
    balancer = LoopBalancer("uw", shared=model.encoder, tasks=["a", "b"])
    with pytest.raises(ConfigError, match=r"submodule of the model"):
        BalancedTrainer(model=model, args=arguments(tmp_path), train_dataset=Pairs(), balancer=balancer)


def test_learned_balancer_weights_inside_the_model_are_trained(tmp_path):
    model = TwoHeads().double()
    model.balancer = LoopBalancer("uw", shared=model.encoder, tasks=["a", "b"])
    before = [p.detach().clone() for p in model.balancer.parameters()]
    trainer = BalancedTrainer(model=model, args=arguments(tmp_path), train_dataset=Pairs(), balancer=model.balancer)
    trainer.train()
    assert before and all(not torch.equal(b, p) for b, p in zip(before, model.balancer.parameters(), strict=True))


def test_resuming_restores_the_balancers_state(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads().double()
    args = arguments(tmp_path, save_strategy="steps", save_steps=STEPS)
    first = LoopBalancer("gradvac", shared=model.encoder, tasks=["a", "b"])  # K x K targets and an RNG
    BalancedTrainer(model=model, args=args, train_dataset=Pairs(), balancer=first).train()
    fresh = LoopBalancer("gradvac", shared=model.encoder, tasks=["a", "b"])
    assert repr(fresh.state_dict()) != repr(first.state_dict())  # the first run moved its state
    resumed = BalancedTrainer(model=model, args=args, train_dataset=Pairs(), balancer=fresh)
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STEPS}"))
    assert repr(fresh.state_dict()) == repr(first.state_dict())


def test_lomo_is_refused(tmp_path):
    model = TwoHeads()
    with pytest.raises(ConfigError, match=r"LOMO updates the weights inside its own backward"):
        BalancedTrainer(
            model=model,
            args=arguments(tmp_path, optim="lomo"),
            train_dataset=Pairs(),
            balancer=LoopBalancer("upgrad", shared=model.encoder),
        )


def test_a_method_that_learns_after_the_optimizer_step_is_refused(tmp_path):
    model = TwoHeads()
    with pytest.raises(ConfigError, match=r"FAMO learns from the losses after each optimizer step"):
        BalancedTrainer(
            model=model,
            args=arguments(tmp_path),
            train_dataset=Pairs(),
            balancer=LoopBalancer("famo", tasks=["a", "b"], shared=model.encoder),
        )
