"""Task groups from measured affinity: the best partitions of the tasks into 2 and 3 groups.

The affinity is the look-ahead inter-task affinity (Fifty et al. 2021, ``core.engine.affinity``)
that every joint run measures on its best model, averaged over the joint runs. As in TAG, a
partition scores the affinity each task receives from the other members of its group
(``Z[i][j]``: a step on task i lowers task j's loss), averaged over tasks; a task alone receives
nothing (0). Partitions are enumerated exhaustively (Stirling numbers: 25 for 5 tasks into 3
groups, 966 for 8), which stays cheap for the task counts a joint model has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..reports.affinity import Matrix

Partition = list[list[str]]


def partitions(tasks: Sequence[str], k: int) -> Iterator[Partition]:
    """Every partition of ``tasks`` into exactly ``k`` non-empty groups (each once, order kept)."""
    if k <= 0 or k > len(tasks):
        return
    if k == len(tasks):
        yield [[t] for t in tasks]
        return
    if k == 1:
        yield [list(tasks)]
        return
    first, rest = tasks[0], tasks[1:]
    for p in partitions(rest, k - 1):  # first alone
        yield [[first], *p]
    for p in partitions(rest, k):  # first joins one of the k groups
        for i in range(k):
            yield [[first, *g] if j == i else g for j, g in enumerate(p)]


def score(matrix: Matrix, partition: Partition) -> float:
    """Mean over tasks of the mean affinity a task receives from its group-mates (0 alone)."""
    received = []
    for group in partition:
        for j in group:
            values = [matrix[i][j] for i in group if i != j and matrix[i][j] == matrix[i][j]]
            received.append(float(np.mean(values)) if values else 0.0)
    return float(np.mean(received))


def best_partitions(matrix: Matrix, sizes: Sequence[int] = (2, 3)) -> dict[int, dict[str, Any]]:
    """Per group count (those that leave at least one group of two tasks): the best-scoring partition."""
    tasks = list(matrix)
    out = {}
    for k in sizes:
        if not 1 < k < len(tasks):
            continue
        best = max(partitions(tasks, k), key=lambda p: score(matrix, p))
        out[k] = {"groups": best, "score": score(matrix, best)}
    return out


def mean_affinity(matrices: Sequence[Mapping[str, Mapping[str, float]]]) -> Matrix | None:
    """Entry-wise mean of several runs' matrices, NaN-free where any run measured the pair."""
    if not matrices:
        return None
    tasks = list(matrices[0])
    out: Matrix = {}
    for i in tasks:
        out[i] = {}
        for j in tasks:
            values = [m[i][j] for m in matrices if m[i][j] == m[i][j]]
            out[i][j] = float(np.mean(values)) if values else float("nan")
    return out


def group_label(groups: Partition) -> str:
    """``groups: a+b, c`` (the row name of a grouping)."""
    return "groups: " + ", ".join("+".join(g) for g in groups)
