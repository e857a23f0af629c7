"""Samplers and pruners by name: ``tune.sampler`` (tpe | random | grid) and ``tune.pruner`` (median | ...).

A search is an Optuna sampler plus the trials it gets. The study's whole budget is written into the
storage once, as waiting trials, and workers claim them one at a time (``study.claim``): a claim is
one atomic state change in the database, so several processes never run more trials than the
budget, and a grid point is never run twice (Optuna's ``GridSampler`` can repeat a point when
workers race; here each point is one waiting trial holding its values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from ...errors import ConfigError
from ...registry import Registry, split_spec
from .space import Dimension, grid


class Search:
    """A sampler that draws each trial's values when the trial starts: ``n_trials`` empty trials."""

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def slots(self, dims: list[Dimension], n_trials: int) -> list[dict[str, Any]]:
        """The waiting trials that make the study's budget: the values each one fixes."""
        return [{} for _ in range(n_trials)]


class GridSearch(Search):
    """Every point of the space once; the points are fixed in advance, so the sampler is never asked."""

    def slots(self, dims: list[Dimension], n_trials: int) -> list[dict[str, Any]]:
        return grid(dims)


SEARCHES: Registry[Search] = Registry("tune sampler")
PRUNERS: Registry[optuna.pruners.BasePruner] = Registry("tune pruner")


@SEARCHES.register("tpe")
def tpe(seed: int, n_startup_trials: int = 5, **options: Any) -> Search:
    """Tree-structured Parzen estimator: after ``n_startup_trials`` random ones, trials sample near the
    good ones (Optuna's default of 10 random trials would spend the whole default budget of 10)."""
    return Search(optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, **options))


@SEARCHES.register("random")
def random(seed: int, **options: Any) -> Search:
    return Search(optuna.samplers.RandomSampler(seed=seed, **options))


@SEARCHES.register("grid")
def grid_search(seed: int) -> Search:
    return GridSearch(optuna.samplers.RandomSampler(seed=seed))


@PRUNERS.register("median")
def median(**options: Any) -> optuna.pruners.BasePruner:
    """Stop a trial whose score at a validation step is below the median of finished trials there."""
    return optuna.pruners.MedianPruner(**options)


@PRUNERS.register("percentile")
def percentile(**options: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.PercentilePruner(**options)


@PRUNERS.register("hyperband")
def hyperband(**options: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(**options)


@PRUNERS.register("none")
def no_pruning() -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def from_spec(registry: Registry[Any], spec: str | Mapping[str, Any], **extra: Any) -> Any:
    """``registry.build``, with Optuna's own argument errors reported as config errors."""
    name, options = split_spec(spec, registry.kind)
    try:
        return registry.build(spec, **extra)
    except TypeError as e:  # an option the Optuna class does not take
        raise ConfigError(f"{registry.kind} '{name}' {options}: {e}") from e
