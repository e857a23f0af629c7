"""Pure gradient-space methods: a K x K Gramian -> K weights, or a K x P Jacobian -> a P-vector.

A method knows nothing of models, autograd, AMP or DDP (that is :mod:`.engine`'s job). It
validates its hyperparameters once in ``__init__``, checks its input once in :meth:`weights` /
:meth:`aggregate`, never records autograd history, and prints as the exact call that builds it.
State (RNG, EMAs) is explicit and checkpointable through ``get_extra_state``.

Two kinds, as torchjd's ``Weighting`` / ``Aggregator``:
- :class:`Weighting`: implements ``_weights(G)``; the update is ``w^T J``. Only the Gramian is
  needed, so the engine may compute the Gramian without ever holding the Jacobian.
- :class:`Aggregator`: implements ``_aggregate(J)``; the K x P Jacobian is materialised.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError

#: properties a method may declare (tested for each method that declares them)
PROPERTIES = frozenset(
    {
        "non_conflicting",  # J J^T w >= 0: no task's loss increases to first order
        "permutation_invariant",  # permuting the rows permutes nothing in the update
        "linear_under_scaling",  # update(c J) = c update(J), c > 0
        "scale_invariant_weights",  # weights(c G) = weights(G), c > 0 (update is linear under scaling)
        "mean_when_aligned",  # orthogonal or aligned rows give back the mean (or sum) gradient
    }
)


class Method(nn.Module):
    """Base of :class:`Weighting` and :class:`Aggregator`: declarations, validation, exact repr."""

    #: ``weighting`` (Gramian -> weights) or ``aggregator`` (Jacobian -> update)
    kind: ClassVar[str]
    #: the gradient spaces the method is defined on
    spaces: ClassVar[tuple[str, ...]] = ("rep", "params")
    #: what one call costs beyond the engine's task gradients, for ``jointtrain list``
    cost: ClassVar[str]
    randomized: ClassVar[bool] = False
    needs_losses: ClassVar[bool] = False
    #: the explicit state the method keeps between steps ("" = none), for ``jointtrain list``
    state: ClassVar[str] = ""
    properties: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        names = hyperparameters(type(self))
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def name_tasks(self, tasks: Sequence[str]) -> None:
        """Learn which task each row index is (the setup's task order), before the first step: for
        hyperparameters a config gives by task name. Most methods need nothing."""

    def _losses(self, losses: Tensor | None, k: int) -> Tensor | None:
        if not self.needs_losses:
            return None
        if losses is None:
            raise ConfigError(f"{type(self).__name__} needs the task loss values: pass losses=... (one per row)")
        losses = losses.detach().double().cpu().reshape(-1)
        if losses.shape[0] != k:
            raise ValueError(f"{type(self).__name__}: {losses.shape[0]} loss values for {k} rows")
        return losses


class Weighting(Method):
    """A method whose update is ``w^T J`` with ``w = weights(J J^T)``."""

    kind: ClassVar[str] = "weighting"

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """K float64 CPU weights from the K x K Gramian; ``losses`` (K) for methods that use them,
        ``rows`` the setup's task index of each row (default 0..K-1) for methods with per-task state."""
        if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
            raise ValueError(
                f"{type(self).__name__}.weights expects a square K x K Gramian, got {tuple(gramian.shape)}"
            )
        k = gramian.shape[0]
        if k == 0:
            return torch.zeros(0, dtype=torch.float64)
        g = gramian.detach().double().cpu()
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"{type(self).__name__}.weights: the Gramian is not finite")
        with torch.no_grad():
            return self._weights((g + g.T) / 2, self._losses(losses, k), _rows(rows, k))

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """The P-vector update ``w^T J`` (in J's dtype and device, without autograd history)."""
        jac = _check_jacobian(self, jacobian)
        if jac.shape[0] == 0:
            return jac.new_zeros(jac.shape[1])
        gramian = jac.double() @ jac.double().T
        return self.weights(gramian, losses, rows).to(jac.device, jac.dtype) @ jac

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        raise NotImplementedError


class Aggregator(Method):
    """A method that needs the whole K x P Jacobian (not a combination of its rows, or per-coordinate)."""

    kind: ClassVar[str] = "aggregator"

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        return self.apply(_check_jacobian(self, jacobian), losses, rows)

    def apply(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """:meth:`aggregate` without the K x P finiteness pass: for the engine, which already
        checked the Gramian's diagonal (a non-finite row makes its entry non-finite)."""
        jac = jacobian.detach()
        if jac.shape[0] == 0:
            return jac.new_zeros(jac.shape[1])
        with torch.no_grad():
            return self._aggregate(jac, self._losses(losses, jac.shape[0]), _rows(rows, jac.shape[0]))

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        raise NotImplementedError


def _check_jacobian(method: Method, jacobian: Tensor) -> Tensor:
    if jacobian.ndim != 2:
        raise ValueError(f"{type(method).__name__}.aggregate expects a K x P Jacobian, got {tuple(jacobian.shape)}")
    jac = jacobian.detach()
    if not bool(torch.isfinite(jac).all()):
        raise ValueError(f"{type(method).__name__}.aggregate: the Jacobian is not finite")
    return jac


def _rows(rows: Sequence[int] | None, k: int) -> list[int]:
    index = list(rows) if rows is not None else list(range(k))
    if len(index) != k:
        raise ValueError(f"{len(index)} row indices for {k} rows")
    return index


# -- hyperparameter checks, with messages that name the problem and the fix ---------------------
def positive(method: str, name: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"{method}: {name} must be > 0, got {value}")
    return float(value)


def non_negative(method: str, name: str, value: float) -> float:
    if not value >= 0:
        raise ConfigError(f"{method}: {name} must be >= 0, got {value}")
    return float(value)


def in_range(method: str, name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ConfigError(f"{method}: {name} must be in [{low}, {high}], got {value}")
    return float(value)


def positive_int(method: str, name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{method}: {name} must be an integer >= 1, got {value}")
    return int(value)


def choice(method: str, name: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(f"{method}: unknown {name} '{value}'; valid: {', '.join(valid)}")
    return value


def grow(state: Tensor, size: int, fill: float) -> Tensor:
    """Pad a per-task state tensor along its first dimension to ``size`` rows."""
    if state.shape[0] >= size:
        return state
    grown = torch.full((size, *state.shape[1:]), fill, dtype=state.dtype, device=state.device)
    grown[: state.shape[0]] = state
    return grown


def grow_square(state: Tensor, size: int) -> Tensor:
    """Pad a K x K per-task-pair state with zeros to ``size`` x ``size``."""
    if state.shape[0] >= size:
        return state
    out = torch.zeros(size, size, dtype=state.dtype)
    out[: state.shape[0], : state.shape[1]] = state
    return out


def hyperparameters(method: type[Method]) -> list[str]:
    """The method's ``__init__`` argument names (each stored under its own name)."""
    params = inspect.signature(method.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def describe_method(method: type[Method]) -> dict[str, Any]:
    return {
        "kind": method.kind,
        "spaces": list(method.spaces),
        "cost": method.cost,
        "randomized": method.randomized,
        "needs_losses": method.needs_losses,
        "state": method.state,
        "properties": sorted(method.properties),
    }
