from __future__ import annotations

import torch

from core.engine.host_syncs import HostSyncCounter


def test_counts_value_reads_and_data_dependent_shapes_only():
    x = torch.randn(8, requires_grad=True)
    with HostSyncCounter() as counter:
        y = (x * 2).sum()  # stays on the device
        y.backward()
        torch.where(x > 0, x, 0.0).mean()
        y.item(), bool(y > 0), x.tolist(), float(y), int(x.argmax())
        x[x > 0], x.nonzero()
    assert counter.calls == {
        "item": 1,
        "__bool__": 1,
        "tolist": 1,
        "__float__": 1,
        "__int__": 1,
        "bool-mask index": 1,
        "nonzero": 1,
    }
    assert counter.total == 7
