from __future__ import annotations

import pytest

from core.evaluation import aggregate_score, delta_m

DIRECTIONS = {"seg": {"miou": True, "acc": True}, "depth": {"abs_err": False}}


def test_delta_m_by_hand():
    baselines = {"seg": {"miou": 0.50, "acc": 0.80}, "depth": {"abs_err": 0.40}}
    results = {"seg": {"miou": 0.55, "acc": 0.76}, "depth": {"abs_err": 0.30}}
    # seg: mean(+10%, -5%) = +2.5%; depth: lower is better, -(0.30-0.40)/0.40 = +25%
    assert delta_m(results, baselines, DIRECTIONS) == pytest.approx((2.5 + 25.0) / 2)


def test_delta_m_needs_a_shared_metric():
    with pytest.raises(ValueError, match="no metric is shared"):
        delta_m({"seg": {"miou": 1.0}}, {"depth": {"abs_err": 1.0}}, DIRECTIONS)


def test_aggregate_score_signs_by_direction():
    results = {"seg": {"miou": 0.6, "acc": 0.9}, "depth": {"abs_err": 0.2}}
    assert aggregate_score(results, {"seg": "miou", "depth": "abs_err"}, DIRECTIONS) == pytest.approx((0.6 - 0.2) / 2)
