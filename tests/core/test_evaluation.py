from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics import PearsonCorrCoef
from torchmetrics.classification import BinaryAUROC

from core.data import DictDataset, Loading, Source
from core.engine.precision import Precision
from core.evaluation import (
    delta_m,
    eval_outputs,
    evaluate,
    higher_is_better,
    metric_senses,
    monitored_value,
    selection_score,
)
from core.metrics import Sense
from core.model import JointModel
from core.task import Task

DIRECTIONS = {"seg": {"miou": True, "acc": True}, "depth": {"abs_err": False}}


def test_delta_m_by_hand():
    baselines = {"seg": {"miou": 0.50, "acc": 0.80}, "depth": {"abs_err": 0.40}}
    results = {"seg": {"miou": 0.55, "acc": 0.76}, "depth": {"abs_err": 0.30}}
    # seg: mean(+10%, -5%) = +2.5%; depth: lower is better, -(0.30-0.40)/0.40 = +25%
    assert delta_m(results, baselines, DIRECTIONS) == pytest.approx((2.5 + 25.0) / 2)


def test_delta_m_needs_a_shared_metric():
    with pytest.raises(ValueError, match="no metric is shared"):
        delta_m({"seg": {"miou": 1.0}}, {"depth": {"abs_err": 1.0}}, DIRECTIONS)


SENSES = {"seg": {"miou": Sense(True, 1.0), "acc": Sense(True, 1.0)}, "depth": {"abs_err": Sense(False, None)}}


def test_selection_score_measures_bounded_metrics_in_their_span_and_unbounded_relatively():
    reference = {"seg": {"miou": 0.5, "acc": 0.8}, "depth": {"abs_err": 400.0}}
    results = {"seg": {"miou": 0.6, "acc": 0.1}, "depth": {"abs_err": 300.0}}
    # seg's primary (miou) +0.1 of its span = +10%; depth in large units -25% error = +25%
    assert selection_score(results, reference, SENSES) == pytest.approx((10.0 + 25.0) / 2)


def test_selection_score_of_a_zero_reference_uses_the_absolute_change():
    assert selection_score({"depth": {"abs_err": 0.5}}, {"depth": {"abs_err": 0.0}}, SENSES) == pytest.approx(-50.0)


def test_raw_score_would_let_large_units_dominate():
    """The bug this replaces: the mean of raw metrics picks the model with the better regression alone."""
    reference = {"seg": {"miou": 0.5}, "depth": {"abs_err": 400.0}}
    good_seg = {"seg": {"miou": 0.9}, "depth": {"abs_err": 390.0}}  # +40 points, +2.5%
    good_depth = {"seg": {"miou": 0.1}, "depth": {"abs_err": 380.0}}  # -40 points, +5%
    assert selection_score(good_seg, reference, SENSES) > selection_score(good_depth, reference, SENSES)


def test_a_task_that_starts_near_zero_does_not_decide_the_checkpoint():
    """The NLP demo's case: NER F1 near 0 at the first validation gave it an enormous weight (relative
    change), and a first value of exactly 0 switched to absolute change: 0.0 and 1e-4 chose
    different checkpoints. Bounded metrics now count in their span, whatever the reference."""
    senses = {"sent": {"accuracy": Sense(True, 1.0)}, "ner": {"f1": Sense(True, 1.0)}}
    early = {"sent": {"accuracy": 0.807}, "ner": {"f1": 0.40}}
    late = {"sent": {"accuracy": 0.790}, "ner": {"f1": 0.41}}  # sentiment -1.7 points, NER +1
    for first_ner in (0.0, 1e-4, 0.01):
        reference = {"sent": {"accuracy": 0.5}, "ner": {"f1": first_ner}}
        assert selection_score(early, reference, senses) > selection_score(late, reference, senses), first_ner


@pytest.mark.parametrize("monitor", ["t/pearson", "score"])
def test_pearson_counts_as_higher_is_better(monitor):
    """torchmetrics' PearsonCorrCoef declares ``higher_is_better = None``: ``bool(None)`` made it
    lower-is-better, so ``monitor: t/pearson`` kept the lowest of the validations."""
    task = Task("t", nn.Linear(2, 1), nn.functional.mse_loss, {"pearson": PearsonCorrCoef}, "y")
    model = JointModel(nn.Identity(), [task])
    senses = metric_senses(model)
    assert senses["t"]["pearson"] == Sense(True, 2.0) and higher_is_better(model)["t"]["pearson"] is True
    reference = {"t": {"pearson": 0.5}}
    scores = [monitored_value({"t": {"pearson": v}}, monitor, reference, senses) for v in (0.6, 0.9, 0.3)]
    assert max(range(3), key=scores.__getitem__) == 1


def test_bf16_evaluation_scores_float32_head_outputs():
    """1,000 distinct logits in [2, 2.1]: bf16 rounds them onto ~7 values, ties that cost AUROC."""
    head = nn.Linear(1, 1)
    nn.init.ones_(head.weight), nn.init.zeros_(head.bias)
    task = Task("b", head, nn.functional.binary_cross_entropy_with_logits, {"auroc": BinaryAUROC}, "b")
    model = JointModel(nn.Identity(), [task])
    x = torch.linspace(2.0, 2.1, 1000)
    source = Source("s", DictDataset({"inputs": x[:, None], "b": (x > 2.05).float()[:, None]}), ["b"])
    autocast = Precision("bf16", torch.device("cpu")).autocast
    with autocast():
        assert len(head(x[:, None]).unique()) < 10  # what the metric would have seen
    results = evaluate(model, [source], Loading(batch_size=250), autocast=autocast)
    assert results["b"]["auroc"] == 1.0  # every positive above every negative: no ties


def test_eval_outputs_is_the_forward_pass_over_each_source_in_eval_mode():
    """The one evaluation pass (``evaluate`` and medical calibration read it): every sample once, in
    order, only the tasks its source labels, dropout off, the model's mode restored, no graph."""
    heads = {name: nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 1)) for name in ("a", "b")}
    tasks = [Task(n, h, nn.functional.mse_loss, {"pearson": PearsonCorrCoef}, n) for n, h in heads.items()]
    model = JointModel(nn.Identity(), tasks).train()
    x = torch.randn(10, 3)
    sources = [
        Source("both", DictDataset({"inputs": x[:6], "a": x[:6, 0], "b": x[:6, 1]}), ["a", "b"]),
        Source("only_b", DictDataset({"inputs": x[6:], "b": x[6:, 1]}), ["b"]),
    ]
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for batch, outputs in eval_outputs(model, sources, Loading(batch_size=2)):
        assert not model.training and all(not o.requires_grad for o in outputs.values())
        for t, output in outputs.items():
            assert len(output) == len(batch[t])
            seen[t].append(output)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(torch.cat(seen["a"]), expected["a"][:6], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(seen["b"]), expected["b"], rtol=0, atol=0)
    assert list(next(iter(eval_outputs(model, sources, Loading(batch_size=2), tasks=["b"])))[1]) == ["b"]
