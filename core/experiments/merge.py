"""Model merging: combine single-task fine-tunes of one starting model into one set of weights.

A task vector is what fine-tuning on one task added to the start, ``tau_k = theta_k - theta_0``
(Ilharco et al. 2023, "Editing models with task arithmetic"). Mergers combine the task vectors and
scale the result: ``theta = theta_0 + lambda * merge(tau_1, ..., tau_K)``:

- ``task_arithmetic``: their sum;
- ``ties`` (Yadav et al. 2023, "TIES-Merging"): each vector trimmed to its ``density`` largest
  magnitudes (over the whole vector, as in the paper), a sign elected per entry (the sign of the
  trimmed vectors' sum: the larger total mass), and the mean of the kept entries that agree with it.

Floating-point entries are combined in float64 and cast back, so ``lambda = 1`` with one task gives
the fine-tuned weights back exactly; other entries (integer buffers) must not have moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from ..registry import Registry

StateDict = dict[str, Tensor]
#: name -> merger(vectors) -> the one vector ``lambda`` scales; kwargs are its hyperparameters
MERGERS: Registry[StateDict] = Registry("merger")


def task_vectors(base: Mapping[str, Tensor], finetuned: Mapping[str, Mapping[str, Tensor]]) -> dict[str, StateDict]:
    """Per task, ``finetuned - base`` on the floating-point entries (float64)."""
    vectors = {}
    for task, state in finetuned.items():
        if set(state) != set(base):
            missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
            raise CheckpointError(
                f"task '{task}': its weights do not match the starting model's (missing {missing[:5]}, "
                f"extra {extra[:5]}); every fine-tune must start from the same model"
            )
        vector = {}
        for key, start in base.items():
            if start.is_floating_point():
                vector[key] = state[key].double() - start.double()
            elif not torch.equal(state[key], start):
                raise CheckpointError(f"task '{task}': the non-float entry '{key}' changed in fine-tuning")
        vectors[task] = vector
    return vectors


def apply(base: Mapping[str, Tensor], vector: Mapping[str, Tensor], lam: float) -> StateDict:
    """``base + lam * vector`` in float64, cast back to each entry's dtype; other entries as in ``base``."""
    return {
        key: (start.double() + lam * vector[key]).to(start.dtype) if key in vector else start.clone()
        for key, start in base.items()
    }


def merge(
    name: str, base: Mapping[str, Tensor], vectors: Mapping[str, Mapping[str, Tensor]], lam: float, **kwargs: float
) -> StateDict:
    """``base + lam * MERGERS[name](vectors, **kwargs)``."""
    if not vectors:
        raise ConfigError("merging needs at least one task vector")
    merger: Callable[..., StateDict] = MERGERS.get(name)
    return apply(base, merger(dict(vectors), **kwargs), lam)


@MERGERS.register("task_arithmetic")
def task_arithmetic(vectors: Mapping[str, Mapping[str, Tensor]]) -> StateDict:
    """The sum of the task vectors."""
    first = next(iter(vectors.values()))
    return {key: torch.stack([v[key] for v in vectors.values()]).sum(0) for key in first}


def trim(vector: Mapping[str, Tensor], density: float) -> StateDict:
    """Zero all but the ``density`` fraction of largest magnitudes of the whole vector (entries tied with
    the smallest one kept stay: the cut is a magnitude threshold)."""
    flat = torch.cat([v.flatten().abs() for v in vector.values()])
    keep = max(1, math.ceil(density * flat.numel()))
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values if flat.numel() else flat.new_zeros(())
    return {key: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for key, v in vector.items()}


@MERGERS.register("ties")
def ties(vectors: Mapping[str, Mapping[str, Tensor]], density: float = 0.2) -> StateDict:
    """TIES-merging: trim each vector to ``density``, elect a sign per entry, average those that agree.

    Args:
        density: fraction of each task vector's entries kept (by magnitude); the paper's default 0.2.
    """
    if not 0 < density <= 1:
        raise ConfigError(f"ties: density must be in (0, 1], got {density}")
    trimmed = [trim(v, density) for v in vectors.values()]
    out = {}
    for key in trimmed[0]:
        stacked = torch.stack([t[key] for t in trimmed])
        sign = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        out[key] = (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)
    return out
