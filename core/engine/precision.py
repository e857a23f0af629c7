"""Mixed precision: the autocast dtype and the fp16 gradient scaler, from ``train.amp``."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``auto``: bf16 on CUDA, full precision on the CPU; ``fp16`` adds a GradScaler."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in ("auto", "off", *AMP_DTYPES):
            raise ConfigError(f"unknown amp mode '{mode}'; valid: auto, bf16, fp16, off")
        self.device = device
        if mode == "auto":
            self.dtype = torch.bfloat16 if device.type == "cuda" else None
        else:
            self.dtype = AMP_DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
