"""CR-MOGM: torchjd 0.18's smoothing of a stateful weighting over steps, any weighting of the
registry through a config spec, and what it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.balancing import build
from core.errors import ConfigError


def _gramian(seed: int, k: int = 3) -> Tensor:
    jac = torch.randn(k, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return jac @ jac.T


@pytest.mark.parametrize("inner", ["pcd", "modo"])
@pytest.mark.parametrize("alpha", [0.9, 0.3])
def test_matches_torchjd_over_steps(inner: str, alpha: float) -> None:
    """Wrapping a stateful weighting that equals torchjd's, so both the average and the wrapped
    state are compared step by step."""
    from torchjd.aggregation import CRMOGMWeighting, MoDoWeighting, PCDWeighting

    ours = build({"name": "cr_mogm", "weighting": inner, "alpha": alpha})
    reference = CRMOGMWeighting(PCDWeighting() if inner == "pcd" else MoDoWeighting(), alpha=alpha)
    for step in range(6):
        gramian = _gramian(step)
        torch.testing.assert_close(ours.weights(gramian), reference(gramian), rtol=1e-10, atol=1e-12)


def test_alpha_zero_is_the_wrapped_weighting_and_one_freezes_it() -> None:
    inner = {"name": "upgrad", "ridge": 0.0}
    plain, smoothed = build(inner), build("cr_mogm", weighting=inner, alpha=0.0)
    frozen = build("cr_mogm", weighting=inner, alpha=1.0)
    first = frozen.weights(_gramian(0))
    for step in range(3):
        gramian = _gramian(step)
        assert torch.equal(smoothed.weights(gramian), plain.weights(gramian))
        assert torch.equal(frozen.weights(gramian), first)


def test_a_task_absent_from_a_step_keeps_its_average() -> None:
    method = build("cr_mogm", weighting="upgrad", alpha=0.5).method  # type: ignore[attr-defined]
    method.weights(_gramian(1))
    kept = float(method.average[1])
    fresh = method.inner.weights(_gramian(2, k=2))
    previous = method.average[[0, 2]].clone()
    w = method.weights(_gramian(2, k=2), rows=[0, 2])
    assert method.average[1] == kept and torch.allclose(w, 0.5 * previous + 0.5 * fresh)


def test_inherits_what_the_wrapped_weighting_needs_and_its_state() -> None:
    wrapped = build("cr_mogm", weighting="gradnorm").method  # type: ignore[attr-defined]
    assert wrapped.needs_losses
    with pytest.raises(ConfigError, match="loss values"):
        wrapped.weights(_gramian(0))
    method, restored = build("cr_mogm", weighting="pcd"), build("cr_mogm", weighting="pcd")
    method.weights(_gramian(3))
    state = method.state_dict()
    assert any(key.startswith("method.inner.") for key in state)  # the wrapped PCD's moving average
    restored.load_state_dict(state)
    assert torch.equal(method.weights(_gramian(4)), restored.weights(_gramian(4)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weighting": "graddrop"}, "not one. Valid: mgda, "),  # an aggregator: no weights to smooth
        ({"weighting": "ew"}, "not one. Valid: mgda, "),  # loss space
        ({"weighting": "up_grad"}, "upgrad"),
        ({"weighting": {"name": "upgrad", "c": 1.0}}, "Valid arguments: space, engine, loss_scales, ridge"),
        ({"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\]"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build("cr_mogm", **kwargs)
