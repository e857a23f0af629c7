"""``tune.space``: dotted config keys and their candidates, as Optuna distributions and back.

A list is a categorical choice; ``{distribution: uniform|loguniform|randint, low, high}`` a range
(``randint`` includes ``high``). Optuna stores categorical choices as None/bool/int/float/str, so a
list holding anything else (a dict of task weights, a list) is stored as JSON text and decoded
before it reaches the config.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from ...errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "randint")
STORABLE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Dimension:
    """One searched config key."""

    key: str
    distribution: BaseDistribution
    as_json: bool = False  # choices stored as JSON text (values Optuna cannot store)

    def suggest(self, trial: Trial) -> Any:
        """This key's value for ``trial`` (sampled, or fixed by a waiting trial), as the config wants it."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return self.decode(trial.suggest_categorical(self.key, d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high)
        assert isinstance(d, FloatDistribution)
        return trial.suggest_float(self.key, d.low, d.high, log=d.log)

    def decode(self, stored: Any) -> Any:
        return json.loads(stored) if self.as_json else stored

    def probes(self) -> list[Any]:
        """Stored values that reach every kind of config this key can produce: each choice, or both bounds."""
        d = self.distribution
        return list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]


def dimension(key: str, spec: Any) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"tune.space.{key} is an empty list; give at least one value")
        as_json = not all(isinstance(v, STORABLE) for v in spec)
        choices = [json.dumps(v, sort_keys=True) for v in spec] if as_json else spec
        if len(set(map(repr, choices))) < len(choices):
            raise ConfigError(f"tune.space.{key} lists a value twice: {spec!r}")
        return Dimension(key, CategoricalDistribution(choices), as_json)
    if not isinstance(spec, Mapping) or spec.get("distribution") not in DISTRIBUTIONS:
        raise ConfigError(
            f"tune.space.{key} must be a list of values or {{distribution: {'|'.join(DISTRIBUTIONS)}, low, high}}, "
            f"got {spec!r}"
        )
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        raise ConfigError(f"tune.space.{key} needs numbers low < high, got low={low!r}, high={high!r}")
    if spec["distribution"] == "randint":
        return Dimension(key, IntDistribution(int(low), int(high)))
    log = spec["distribution"] == "loguniform"
    if log and low <= 0:
        raise ConfigError(f"tune.space.{key}: a loguniform distribution needs low > 0, got {low}")
    return Dimension(key, FloatDistribution(float(low), float(high), log=log))


def dimensions(space: Mapping[str, Any]) -> list[Dimension]:
    return [dimension(k, v) for k, v in space.items()]


def grid(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every combination of the choices, as stored values, in the order the space lists them."""
    ranges = [k for k in dims if not isinstance(k.distribution, CategoricalDistribution)]
    if ranges:
        raise ConfigError(
            f"the grid sampler needs lists of values; {[d.key for d in ranges]} are distributions: "
            "use sampler: tpe or random"
        )
    choices = [d.distribution.choices for d in dims]  # type: ignore[attr-defined]
    return [dict(zip((d.key for d in dims), point, strict=True)) for point in itertools.product(*choices)]


def decoded(dims: list[Dimension], stored: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's stored parameters -> config values."""
    by_key = {d.key: d for d in dims}
    return {k: by_key[k].decode(v) if k in by_key else v for k, v in stored.items()}
