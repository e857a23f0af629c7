from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC

from core.data import DictDataset, Loading, Source
from core.engine.precision import Precision
from core.evaluation import delta_m, evaluate, selection_score
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


def test_selection_score_is_the_relative_change_of_primary_metrics():
    reference = {"seg": {"miou": 0.5, "acc": 0.8}, "depth": {"abs_err": 400.0}}
    results = {"seg": {"miou": 0.6, "acc": 0.1}, "depth": {"abs_err": 300.0}}
    # seg's primary (miou) +20%; depth in large units -25% error = +25%: it counts no more than miou
    assert selection_score(results, reference, DIRECTIONS) == pytest.approx((20.0 + 25.0) / 2)


def test_selection_score_of_a_zero_reference_uses_the_absolute_change():
    assert selection_score({"depth": {"abs_err": 0.5}}, {"depth": {"abs_err": 0.0}}, DIRECTIONS) == pytest.approx(-50.0)


def test_raw_score_would_let_large_units_dominate():
    """The bug this replaces: the mean of raw metrics picks the model with the better regression alone."""
    reference = {"seg": {"miou": 0.5}, "depth": {"abs_err": 400.0}}
    good_seg = {"seg": {"miou": 0.9}, "depth": {"abs_err": 390.0}}  # +80%, +2.5%
    good_depth = {"seg": {"miou": 0.1}, "depth": {"abs_err": 380.0}}  # -80%, +5%
    assert selection_score(good_seg, reference, DIRECTIONS) > selection_score(good_depth, reference, DIRECTIONS)


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
