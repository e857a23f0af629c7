"""Task groups (e.g. suggested by the affinity tool) -> a ``branched`` architecture spec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError


def branched_from_groups(groups: Sequence[Sequence[str]], branch_point: int, group_until: int) -> dict[str, Any]:
    """A tree where all tasks share ``branch_point`` blocks, each group shares up to ``group_until``.

    ``groups`` partitions the tasks (lists of task names, as the affinity tool suggests them);
    singleton groups are tasks that branch off right after the trunk. E.g.
    ``branched_from_groups([["digit", "parity"], ["large"]], 1, 2)`` ->
    ``{"name": "branched", "branch_point": 1, "groups": [{"tasks": ["digit", "parity"], "until": 2}]}``.
    """
    seen: set[str] = set()
    for group in groups:
        if not group:
            raise ConfigError("branched_from_groups: a task group is empty")
        repeated = seen & set(group)
        if repeated:
            raise ConfigError(
                f"branched_from_groups: tasks {sorted(repeated)} are in two groups; groups partition tasks"
            )
        seen |= set(group)
    if group_until < branch_point:
        raise ConfigError(f"branched_from_groups: group_until ({group_until}) must be >= branch_point ({branch_point})")
    return {
        "name": "branched",
        "branch_point": branch_point,
        "groups": [{"tasks": list(g), "until": group_until} for g in groups if len(g) > 1],
    }
