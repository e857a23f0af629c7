"""Counting host-device synchronisations, the stalls a sync-free training step avoids.

On CUDA, ``torch.cuda.set_sync_debug_mode`` sees every synchronising kernel; on the CPU nothing
synchronises, so :class:`HostSyncCounter` counts the Python-level calls that would: reading a
value (``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor) or an output whose size
depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__"})
DATA_DEPENDENT = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"})


def _bool_mask(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter() as c: ...`` then ``c.total`` / ``c.calls`` (name -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS or name in DATA_DEPENDENT:
            self.calls[name] += 1
        elif name == "__getitem__" and len(args) > 1 and _bool_mask(args[1]):
            self.calls["bool-mask index"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.calls.values())
