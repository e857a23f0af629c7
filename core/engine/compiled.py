"""``train.compile``: ``torch.compile`` of the backbone and every head, in place.

``nn.Module.compile`` compiles a module's forward without wrapping it, so parameter names, the
state dict and ``save_pretrained`` stay exactly as without compilation (nothing to unwrap). Where
compilation cannot work (no dynamo on this Python, no C++ compiler for inductor on the CPU)
training warns once and runs eagerly; an unknown backend name is a config error.
"""

from __future__ import annotations

import shutil
import warnings

import torch

from ..errors import ConfigError
from ..model import JointModel


def unavailable(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot compile here, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python / platform"
    if backend == "inductor" and device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "inductor on the CPU needs a C++ compiler (none on PATH)"
    return None


def compile_model(model: JointModel, setting: bool | str, device: torch.device) -> bool:
    """Compile ``model``'s backbone and heads for ``setting`` (True = inductor); False if it ran eagerly."""
    if setting is False:
        return False
    backend = "inductor" if setting is True else str(setting)
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(
            f"unknown train.compile backend '{backend}'; valid: {', '.join(torch._dynamo.list_backends())}"
        )
    reason = unavailable(backend, device)
    if reason is not None:
        warnings.warn(f"train.compile: {reason}; training without compilation", RuntimeWarning, stacklevel=2)
        return False
    model.backbone.compile(backend=backend)
    for head in model.heads.values():
        head.compile(backend=backend)
    return True
