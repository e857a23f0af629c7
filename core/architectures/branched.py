"""Branched sharing: a shared trunk, then task-specific (or group-specific) copies of later blocks.

Vandenhende, Georgoulis, De Brabandere, Van Gool, "Branched Multi-Task Networks: Deciding What
Layers To Share", BMVC 2020. The tree is given by where the trunk ends (``branch_point``) and,
optionally, groups of tasks that share further blocks before splitting (e.g. from the affinity
tool, see :func:`core.architectures.groups.branched_from_groups`).

Every branch starts as a copy of the backbone's own blocks, so pretrained weights carry into
each branch. ``branch_point = 0`` gives one independent network per task; ``branch_point =
num_blocks`` is hard sharing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import Architecture, require_blocks
from .registry import ARCHITECTURES


@dataclass(frozen=True)
class Node:
    """Blocks ``[start, end)`` run once for ``tasks``; ``parent`` is None for children of the trunk."""

    key: str
    tasks: frozenset[str]
    start: int
    end: int
    parent: str | None
    group: bool


def build_tree(
    branch_point: int | Mapping[str, int],
    groups: Sequence[Mapping[str, Any]],
    tasks: Sequence[str],
    depth: int,
) -> tuple[int, list[Node]]:
    """(trunk end, nodes parents-first) from the spec; validates it against the tasks and depth."""
    if isinstance(branch_point, Mapping):  # per-task branch points: tasks leaving later share longer
        unknown = set(branch_point) - set(tasks)
        if unknown or set(tasks) - set(branch_point):
            raise ConfigError(
                f"branched: per-task branch_point must name every task exactly ({', '.join(tasks)}); "
                f"got {sorted(branch_point)}"
            )
        if groups:
            raise ConfigError("branched: give per-task branch points or groups, not both")
        points = {t: int(p) for t, p in branch_point.items()}
        trunk = min(points.values())
        levels = sorted(set(points.values()) - {trunk})
        groups = [{"tasks": [t for t in tasks if points[t] >= v], "until": v} for v in levels]
        groups = [g for g in groups if len(g["tasks"]) > 1]
    else:
        trunk = int(branch_point)
    if not 0 <= trunk <= depth:
        raise ConfigError(f"branched: branch_point must be in [0, {depth}] (the backbone's blocks), got {trunk}")
    parsed: list[tuple[frozenset[str], int]] = []
    for i, group in enumerate(groups):
        if set(group) != {"tasks", "until"}:
            raise ConfigError(f"branched: group {i} must be {{tasks: [...], until: block}}, got {dict(group)}")
        members = frozenset(group["tasks"])
        for t in members:
            if t not in tasks:
                raise ConfigError(f"branched: group {i} names unknown task '{t}'; tasks: {', '.join(tasks)}")
        if len(members) < 2:
            raise ConfigError(f"branched: group {i} needs two tasks or more, got {sorted(members)}")
        if not trunk <= int(group["until"]) <= depth:
            raise ConfigError(f"branched: group {i} until={group['until']} must be in [{trunk}, {depth}]")
        parsed.append((members, int(group["until"])))
    for i, (a, _) in enumerate(parsed):
        for b, _ in parsed[i + 1 :]:
            if a == b:
                raise ConfigError(f"branched: two groups have the same tasks {sorted(a)}; merge them")
            if a & b and not (a <= b or b <= a):
                raise ConfigError(f"branched: groups {sorted(a)} and {sorted(b)} overlap without nesting")
    # the parent of a group/task: the smallest group strictly containing it
    order = sorted(range(len(parsed)), key=lambda i: -len(parsed[i][0]))
    nodes: list[Node] = []
    ends: dict[str | None, int] = {None: trunk}
    for i in order:
        members, until = parsed[i]
        parent = _parent(members, parsed, exclude=i)
        if until < ends[parent]:
            raise ConfigError(f"branched: group {sorted(members)} ends before the group containing it")
        nodes.append(Node(f"group:{i}", members, ends[parent], until, parent, True))
        ends[f"group:{i}"] = until
    for t in tasks:
        parent = _parent(frozenset([t]), parsed, exclude=None)
        nodes.append(Node(t, frozenset([t]), ends[parent], depth, parent, False))
    return trunk, nodes


def _parent(members: frozenset[str], groups: list[tuple[frozenset[str], int]], exclude: int | None) -> str | None:
    containing = [i for i, (g, _) in enumerate(groups) if i != exclude and members < g]
    return f"group:{min(containing, key=lambda i: len(groups[i][0]))}" if containing else None


@ARCHITECTURES.register("branched")
class Branched(Architecture):
    """A tree of blocks: the trunk (the backbone's first ``branch_point`` blocks), group nodes, task leaves.

    Args:
        branch_point: blocks shared by all tasks; or ``{task: block}``, each task leaving the
            shared path after its own block (tasks leaving later share longer).
        groups: ``[{tasks: [...], until: block}]``: these tasks share blocks up to ``until``
            before splitting further; groups nest or are disjoint (a tree).
        structure_tasks: the tasks the tree was built for; set when a subset of a saved model is
            loaded (nodes used only by absent tasks are not built).
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        branch_point: int | Mapping[str, int] = 1,
        groups: Sequence[Mapping[str, Any]] = (),
        structure_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__(tasks)
        blocks = require_blocks(backbone, "branched")
        self.structure_tasks = list(structure_tasks or tasks)
        for t in self.tasks:
            self.check_task(t, self.structure_tasks, "branched (structure_tasks)")
        self.branch_point_spec: int | dict[str, int] = (
            dict(branch_point) if isinstance(branch_point, Mapping) else int(branch_point)
        )
        self.groups_spec = [{"tasks": list(g["tasks"]), "until": g["until"]} for g in groups]
        self.depth = blocks.num_blocks()
        self.trunk, nodes = build_tree(self.branch_point_spec, self.groups_spec, self.structure_tasks, self.depth)
        kept = set(self.tasks)
        self.tree = [n for n in nodes if n.tasks & kept]  # parents first
        # copies of the original blocks, made before the backbone lets go of them
        self.nodes = nn.ModuleDict(
            {n.key: nn.ModuleList(copy.deepcopy(blocks.block(b)) for b in range(n.start, n.end)) for n in self.tree}
        )
        self._trunk = [blocks.block(b) for b in range(self.trunk)]  # views of the backbone's modules, not owned
        blocks.drop_blocks(self.trunk)
        self._finish = blocks.finish
        self._single_tensor_state = blocks.single_tensor_state()
        self.path = {t: self._path(t) for t in self.tasks}

    def _path(self, task: str) -> list[str]:
        by_key = {n.key: n for n in self.tree}
        path, key = [], task
        while key is not None:
            path.append(key)
            key = by_key[key].parent
        return path[::-1]

    def _users(self, node: Node) -> frozenset[str]:
        return node.tasks & frozenset(self.tasks)

    @property
    def shared_representation(self) -> bool:  # type: ignore[override]
        # exact 'rep' needs one tensor at the branch point, and every parameter past it task-specific
        return self._single_tensor_state and self.trunk > 0 and all(len(self._users(n)) == 1 for n in self.tree)

    def encode(self, backbone: nn.Module, inputs: Any) -> Any:
        state = backbone.stem(inputs)
        for block in self._trunk:
            state = block(state)
        return state

    def decode(self, features: Any, tasks: Sequence[str]) -> dict[str, Any]:
        states: dict[str, Any] = {}  # a group node runs once for all its asked tasks
        out = {}
        for t in tasks:
            state = features
            for key in self.path[t]:
                if key not in states:
                    x = state
                    for block in self.nodes[key]:
                        x = block(x)
                    states[key] = x
                state = states[key]
            out[t] = self._finish(state)
        return out

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        # a group node left with one task (a subset was loaded) is that task's alone
        by_key = {n.key: n for n in self.tree}
        return [
            p for key in self.path[task] if self._users(by_key[key]) == {task} for p in self.nodes[key].parameters()
        ]

    def spec(self) -> dict[str, Any]:
        return {
            "name": "branched",
            "branch_point": self.branch_point_spec,
            "groups": self.groups_spec,
            "structure_tasks": self.structure_tasks,
        }
