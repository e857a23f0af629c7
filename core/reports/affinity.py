"""Task affinity read from a run: logged gradient cosines as a K x K matrix, and the task groups it suggests.

``cosine_affinity``: the mean pairwise cosine of task gradients that a gradient-space balancing
method logged (``cos/<a>/<b>`` or ``cos/<a>|<b>`` keys of the train records). The look-ahead
measurement on a trained model is ``core.engine.affinity``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Matrix = dict[str, dict[str, float]]


def parse_cosine_key(key: str, tasks: Sequence[str]) -> tuple[str, str] | None:
    """``cos/a/b`` or ``cos/a|b`` -> (a, b) when both are tasks (task names may contain '/')."""
    if not key.startswith("cos/"):
        return None
    body = key[4:]
    if "|" in body:
        a, _, b = body.partition("|")
        return (a, b) if a in tasks and b in tasks else None
    for i, ch in enumerate(body):
        if ch == "/" and body[:i] in tasks and body[i + 1 :] in tasks:
            return body[:i], body[i + 1 :]
    return None


def cosine_affinity(records: Iterable[Mapping[str, Any]], tasks: Sequence[str]) -> Matrix | None:
    """Mean logged gradient cosine per task pair (1 on the diagonal); None when nothing was logged."""
    sums: dict[tuple[str, str], list[float]] = {}
    for record in records:
        for key, value in record.items():
            pair = parse_cosine_key(key, tasks)
            if pair is not None and isinstance(value, (int, float)):
                sums.setdefault(pair, []).append(float(value))
    if not sums:
        return None
    matrix: Matrix = {a: {b: (1.0 if a == b else float("nan")) for b in tasks} for a in tasks}
    for (a, b), values in sums.items():
        matrix[a][b] = matrix[b][a] = sum(values) / len(values)
    return matrix


def suggest_groups(matrix: Matrix, threshold: float = 0.0) -> list[list[str]]:
    """Greedy agglomerative grouping: merge the two groups whose mean symmetric affinity across them
    is highest, while it exceeds ``threshold``. Tasks left alone are better trained apart."""
    tasks = list(matrix)

    def pair(a: str, b: str) -> float:
        values = [v for v in (matrix[a][b], matrix[b][a]) if v == v]  # NaN-free
        return sum(values) / len(values) if values else float("-inf")

    groups = [[t] for t in tasks]
    while len(groups) > 1:
        best, best_value = None, threshold
        for g, h in itertools.combinations(range(len(groups)), 2):
            value = sum(pair(a, b) for a in groups[g] for b in groups[h]) / (len(groups[g]) * len(groups[h]))
            if value > best_value:
                best, best_value = (g, h), value
        if best is None:
            break
        g, h = best
        groups[g] = groups[g] + groups[h]
        del groups[h]
    return groups
