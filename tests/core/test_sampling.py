from __future__ import annotations

import collections

import pytest

from core.errors import ConfigError
from core.sampling import SAMPLERS

SIZES = {"big": 90, "mid": 9, "small": 1}


@pytest.fixture(params=SAMPLERS.names())
def sampler(request):
    s = SAMPLERS.build({"name": request.param, "seed": 3})
    s.setup(SIZES)
    return s


def test_choice_is_a_pure_function_of_seed_and_step(sampler):
    again = SAMPLERS.build({"name": sampler_name(sampler), "seed": 3})
    again.setup(SIZES)
    assert [sampler.choose(i) for i in range(50)] == [again.choose(i) for i in range(50)]


def test_every_source_is_drawn_and_only_known_ones(sampler):
    drawn = collections.Counter(s for i in range(3000) for s in sampler.choose(i))
    assert set(drawn) == set(SIZES)
    assert sampler.steps_per_epoch() > 0 and "epoch" in sampler.describe()


def sampler_name(sampler) -> str:
    return next(n for n in SAMPLERS.names() if type(sampler) is SAMPLERS.get(n))


def test_temperature_flattens_proportions_and_caps():
    counts = {}
    for name, kwargs in {"proportional": {}, "temperature": {"temperature": 2.0}, "uniform": {}}.items():
        s = SAMPLERS.build({"name": name, "seed": 0, **kwargs})
        s.setup(SIZES)
        counts[name] = collections.Counter(s.choose(i)[0] for i in range(20000))["small"] / 20000
    assert counts["proportional"] == pytest.approx(0.01, abs=0.004)
    assert counts["temperature"] == pytest.approx(1 / (90**0.5 + 3 + 1), abs=0.01)
    assert counts["uniform"] == pytest.approx(1 / 3, abs=0.02)
    capped = SAMPLERS.build({"name": "temperature", "seed": 0, "temperature": 1.0, "cap": 9})
    capped.setup(SIZES)
    assert capped.probabilities()[0] == pytest.approx(9 / 19)


def test_round_robin_cycles_and_all_takes_everything():
    rr = SAMPLERS.build("round_robin")
    rr.setup(SIZES)
    assert [rr.choose(i)[0] for i in range(4)] == ["big", "mid", "small", "big"]
    everything = SAMPLERS.build("all")
    everything.setup(SIZES)
    assert everything.choose(7) == list(SIZES) and everything.steps_per_epoch() == 90


def test_bad_temperature_is_refused():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        SAMPLERS.build({"name": "temperature", "temperature": 0})
