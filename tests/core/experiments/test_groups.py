"""Task groups: exhaustive partitions and the affinity score that picks among them."""

from __future__ import annotations

import math

import pytest

from core.experiments.groups import best_partitions, group_label, mean_affinity, partitions, score


def stirling2(n: int, k: int) -> int:
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** n for i in range(k + 1)) // math.factorial(k)


@pytest.mark.parametrize(("n", "k"), [(3, 2), (4, 2), (4, 3), (5, 3), (6, 2), (3, 1), (3, 3)])
def test_partitions_are_every_set_partition_once(n, k):
    tasks = [f"t{i}" for i in range(n)]
    found = [frozenset(frozenset(g) for g in p) for p in partitions(tasks, k)]
    assert len(found) == len(set(found)) == stirling2(n, k)
    for p in found:
        assert len(p) == k and sorted(t for g in p for t in g) == tasks


def test_best_partition_recovers_the_blocks_of_a_block_affinity():
    tasks = ["a", "b", "c", "d", "e"]
    block = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2}
    matrix = {i: {j: (5.0 if block[i] == block[j] else -3.0) for j in tasks} for i in tasks}
    best = best_partitions(matrix, (2, 3, 5))
    assert sorted(map(sorted, best[3]["groups"])) == [["a", "b"], ["c", "d"], ["e"]]
    assert best[3]["score"] == pytest.approx(5.0 * 4 / 5)  # e receives nothing
    assert 5 not in best  # all apart is the single-task row, not a grouping
    assert score(matrix, [["a", "b", "c", "d", "e"]]) < best[3]["score"]
    assert group_label([["a", "b"], ["c"]]) == "groups: a+b, c"


def test_mean_affinity_skips_unmeasured_pairs():
    nan = float("nan")
    m1 = {"a": {"a": nan, "b": 2.0}, "b": {"a": nan, "b": nan}}
    m2 = {"a": {"a": nan, "b": 4.0}, "b": {"a": 1.0, "b": nan}}
    mean = mean_affinity([m1, m2])
    assert mean["a"]["b"] == 3.0 and mean["b"]["a"] == 1.0 and math.isnan(mean["a"]["a"])
    assert mean_affinity([]) is None
