"""Per-task vectors given in a config (a preference direction, a reference point), checked once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

#: a vector over the tasks: one value per task in the config's task order, or by task name
TaskVector = Sequence[float] | Mapping[str, float]


def per_task(method: str, name: str, value: TaskVector | None, tasks: list[str], default: float) -> dict[str, float]:
    """``value`` as ``{task: float}`` over ``tasks`` (``default`` everywhere when ``None``)."""
    if value is None:
        return dict.fromkeys(tasks, default)
    if isinstance(value, str):
        raise ConfigError(f"{method}: {name} must be a list of numbers or a mapping task -> number, got {value!r}")
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(tasks))
        missing = [t for t in tasks if t not in value]
        if unknown or missing:
            raise ConfigError(
                f"{method}: {name} must give one value per task ({', '.join(tasks)}); "
                f"unknown: {unknown or 'none'}, missing: {missing or 'none'}"
            )
        out = {t: float(value[t]) for t in tasks}
    else:
        if len(value) != len(tasks):
            raise ConfigError(
                f"{method}: {name} has {len(value)} values for {len(tasks)} tasks; give one per task in the "
                f"config's order ({', '.join(tasks)}) or a mapping task -> value"
            )
        out = {t: float(v) for t, v in zip(tasks, value, strict=True)}
    if not all(math.isfinite(v) for v in out.values()):
        raise ConfigError(f"{method}: {name} must be finite, got {out}")
    return out


def preference(method: str, value: TaskVector | None, tasks: list[str]) -> dict[str, float]:
    """A preference direction: non-negative, not all zero (uniform when ``None``)."""
    out = per_task(method, "preference", value, tasks, 1.0)
    if any(v < 0 for v in out.values()) or not any(v > 0 for v in out.values()):
        raise ConfigError(f"{method}: preference must be >= 0 with at least one value > 0, got {out}")
    return out
