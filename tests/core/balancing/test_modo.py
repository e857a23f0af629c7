"""MoDo: torchjd 0.18's weights over steps, weights on the simplex, tasks absent from a step."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.balancing import build
from core.errors import ConfigError


def _gramian(seed: int, k: int = 3) -> Tensor:
    jac = torch.randn(k, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return jac @ jac.T


@pytest.mark.parametrize(("gamma", "rho"), [(0.1, 0.1), (0.01, 0.0), (0.5, 1.0)])
def test_matches_torchjd_over_steps(gamma: float, rho: float) -> None:
    from torchjd.aggregation import MoDoWeighting

    ours, reference = build("modo", gamma=gamma, rho=rho), MoDoWeighting(gamma=gamma, rho=rho)
    for step in range(8):
        gramian = _gramian(step)
        torch.testing.assert_close(ours.weights(gramian), reference(gramian), rtol=1e-12, atol=1e-14)


def test_weights_stay_on_the_simplex_and_move_towards_mgda() -> None:
    """Many steps on one fixed Gramian: projected gradient descent on ``lambda^T (G + rho I) lambda / 2``
    converges to MGDA's min-norm weights (rho = 0)."""
    gramian = _gramian(4)
    method = build("modo", gamma=0.02, rho=0.0)
    for _ in range(3000):
        w = method.weights(gramian)
        assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    mgda = build("mgda").weights(gramian)
    assert torch.allclose(w, mgda, atol=1e-4)


def test_a_task_absent_from_a_step_keeps_its_weight() -> None:
    method = build("modo").method  # type: ignore[attr-defined]
    method.weights(_gramian(1))
    kept = float(method.task_weights[1])
    w = method.weights(_gramian(2, k=2), rows=[0, 2])
    assert method.task_weights[1] == kept and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_state_round_trips() -> None:
    method, restored = build("modo"), build("modo")
    method.weights(_gramian(5))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(method.weights(_gramian(6)), restored.weights(_gramian(6)))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"gamma": 0.0}, "gamma must be > 0"), ({"rho": -1.0}, "rho must be >= 0")]
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build("modo", **kwargs)
