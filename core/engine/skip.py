"""An exact skip of a non-finite step, decided on the device where the optimizer allows it.

torch's fused optimizers (AdamW, Adam, SGD with ``fused=True``) take a ``found_inf`` tensor, the
input ``GradScaler`` feeds them: where it is 1 the kernel leaves parameters, moments and step
counts as they were, with nothing read back to the host. We use the same input for a non-finite
loss on an accelerator. On the CPU, where reading a value costs no device sync, the host decides
(the kernel's ``found_inf`` path cost ~12 % of a 10 ms step there: ``scripts/bench_step.py``);
so does any other optimizer. Under fp16 the scaler makes the decision: :func:`poison` writes an
``inf`` where it looks, so it skips *and* lowers its scale, exactly as for an overflow of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def step_unless(optimizer: torch.optim.Optimizer, finite: Tensor, on_device: bool) -> None:
    """``optimizer.step()`` unless ``finite`` (a bool tensor on the parameters' device) is False;
    ``on_device``: decide without reading ``finite`` back where the optimizer can."""
    if on_device and getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: no read-back
        optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(finite):  # a host read: free on the CPU, a sync elsewhere (an optimizer that cannot skip)
        optimizer.step()


def poison(params: Sequence[nn.Parameter], finite: Tensor) -> None:
    """Write ``inf`` into one gradient where ``finite`` is False, for the fp16 scaler to find.

    A step that ran no backward (skipped before it) gets a zero gradient to write into: that
    step is skipped anyway, so the zero never reaches the optimizer.
    """
    target = next((p for p in params if p.grad is not None), None)
    if target is None:
        target = params[0]
        target.grad = torch.zeros_like(target)
    target.grad.masked_fill_(~finite, math.inf)  # type: ignore[union-attr]
