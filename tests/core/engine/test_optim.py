from __future__ import annotations

import pytest

from core.engine.optim import SCHEDULES


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedules_warm_up_linearly_then_stay_in_range(name):
    factor = SCHEDULES.build(name, total=100, warmup=10, min_ratio=0.1)
    assert [factor(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(10) == pytest.approx(1.0)
    assert all(0.1 - 1e-9 <= factor(i) <= 1.0 + 1e-9 for i in range(10, 120))


def test_cosine_and_linear_end_at_the_floor():
    for name in ("cosine", "linear"):
        assert SCHEDULES.build(name, total=100, warmup=0, min_ratio=0.1)(100) == pytest.approx(0.1)
    assert SCHEDULES.build("cosine", total=100, warmup=0)(50) == pytest.approx(0.5)
