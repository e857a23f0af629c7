"""Merging state dicts: task arithmetic by hand, TIES against a slow element-wise reference."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import CheckpointError, ConfigError
from core.experiments.merge import MERGERS, merge, task_vectors


def test_task_arithmetic_matches_a_hand_computed_state_dict() -> None:
    base = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5]), "n": torch.tensor([7])}
    a = {"w": torch.tensor([[2.0, 2.0], [3.0, 0.0]]), "b": torch.tensor([1.5]), "n": torch.tensor([7])}
    b = {"w": torch.tensor([[1.0, 4.0], [1.0, 4.0]]), "b": torch.tensor([-0.5]), "n": torch.tensor([7])}
    # tau_a = [[1, 0], [0, -4]], [1];  tau_b = [[0, 2], [-2, 0]], [-1];  sum = [[1, 2], [-2, -4]], [0]
    merged = merge("task_arithmetic", base, task_vectors(base, {"a": a, "b": b}), 0.5)
    assert torch.equal(merged["w"], torch.tensor([[1.5, 3.0], [2.0, 2.0]]))
    assert torch.equal(merged["b"], torch.tensor([0.5]))
    assert torch.equal(merged["n"], torch.tensor([7])) and merged["w"].dtype == torch.float32


@pytest.mark.parametrize("name,kwargs", [("task_arithmetic", {}), ("ties", {"density": 1.0})])
def test_one_task_at_lambda_one_gives_the_finetuned_weights_back_exactly(name: str, kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(5, 7, generator=gen), "h": torch.randn(3, generator=gen).half()}
    tuned = {k: (v.float() + 1e-3 * torch.randn(v.shape, generator=gen)).to(v.dtype) for k, v in base.items()}
    merged = merge(name, base, task_vectors(base, {"only": tuned}), 1.0, **kwargs)
    assert all(torch.equal(merged[k], tuned[k]) for k in base)


def slow_ties(vectors: list[dict[str, list[float]]], density: float) -> dict[str, list[float]]:
    """TIES entry by entry: trim each task vector to its top ``density`` magnitudes (ties at the cut kept),
    elect the sign of the trimmed sum, average the entries that are non-zero and agree with it."""
    trimmed = []
    for vector in vectors:
        magnitudes = sorted((abs(x) for values in vector.values() for x in values), reverse=True)
        cut = magnitudes[max(1, math.ceil(density * len(magnitudes))) - 1]
        trimmed.append({k: [x if abs(x) >= cut else 0.0 for x in values] for k, values in vector.items()})
    out = {}
    for key in vectors[0]:
        out[key] = []
        for i in range(len(vectors[0][key])):
            entries = [t[key][i] for t in trimmed]
            total = sum(entries)
            sign = (total > 0) - (total < 0)
            agreeing = [x for x in entries if x != 0 and ((x > 0) - (x < 0)) == sign]
            out[key].append(sum(agreeing) / len(agreeing) if agreeing and sign else 0.0)
    return out


def test_ties_on_a_hand_made_sign_conflict() -> None:
    base = {"p": torch.zeros(4, dtype=torch.float64)}
    a = {"p": torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=torch.float64)}
    b = {"p": torch.tensor([-1.0, 4.0, 2.0, -0.5], dtype=torch.float64)}
    c = {"p": torch.tensor([-1.0, -2.0, -2.0, 0.0], dtype=torch.float64)}
    # density 1: sums 1, 1, 2, 0 -> signs +, +, +, none; agreeing means 3, 4, 2, 0
    merged = merge("ties", base, task_vectors(base, {"a": a, "b": b, "c": c}), 1.0, density=1.0)
    assert merged["p"].tolist() == [3.0, 4.0, 2.0, 0.0]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_the_slow_reference_on_sign_conflicts(seed: int, density: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (3, 2), "a.bias": (3,), "b": (4,)}
    base = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    tasks = {}
    for t in range(3):  # small integers: many sign conflicts, ties in magnitude and exact zeros
        tasks[f"t{t}"] = {k: v + torch.randint(-3, 4, v.shape, generator=gen).double() for k, v in base.items()}
    vectors = task_vectors(base, tasks)
    merged = merge("ties", base, vectors, 0.7, density=density)
    flat = [{k: v.flatten().tolist() for k, v in vec.items()} for vec in vectors.values()]
    expected = slow_ties(flat, density)
    for k, v in base.items():
        want = v.flatten() + 0.7 * torch.tensor(expected[k], dtype=torch.float64)
        torch.testing.assert_close(merged[k].flatten(), want, rtol=0, atol=1e-12)


def test_merging_refuses_mismatched_weights_and_bad_settings() -> None:
    base = {"w": torch.zeros(2), "n": torch.tensor([1])}
    with pytest.raises(CheckpointError, match="do not match the starting model"):
        task_vectors(base, {"a": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="non-float entry 'n' changed"):
        task_vectors(base, {"a": {"w": torch.ones(2), "n": torch.tensor([2])}})
    vectors = task_vectors(base, {"a": {"w": torch.ones(2), "n": torch.tensor([1])}})
    with pytest.raises(ConfigError, match="density"):
        merge("ties", base, vectors, 1.0, density=0.0)
    with pytest.raises(ConfigError, match="unknown merger 'tie'"):
        merge("tie", base, vectors, 1.0)
    assert {"task_arithmetic", "ties"} <= set(MERGERS.names())
