"""Generic backbones and the backbone protocol.

A backbone (:class:`Backbone`) maps a batch's ``inputs`` to features and exposes ``out_dim``; the
optional members let it travel in a model folder (``export_spec``, ``save_extra`` / ``load_extra``).
A backbone may also expose its computation as blocks (:class:`BlockBackbone`): the sharing
architectures (``core.architectures``) then copy, truncate or interleave those blocks; or its
stages' widths and strides (:class:`MultiScaleBackbone`), which dense heads are sized from. What the
data knows that a backbone needs (input width, a fitted schema, a tokenizer) arrives as
``DataBundle.backbone_updates``, merged into the backbone's spec before it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone", builtins=("core.tabular",))


@runtime_checkable
class Backbone(Protocol):
    """What ``JointModel`` needs of a backbone: any ``nn.Module`` with these members.

    ``out_dim`` is the width of pooled features, read by the pooled heads (required for them).
    Optional capabilities are protocols of their own: :class:`ExportingBackbone` (without it the
    spec it was built from is saved), :class:`FilesBackbone`, :class:`HeadNamingBackbone` (without
    it, ``linear``), :class:`BlockBackbone`, :class:`MultiScaleBackbone`.
    """

    out_dim: int

    def __call__(self, inputs: Any) -> Any: ...


@runtime_checkable
class ExportingBackbone(Protocol):
    """Saves the JSON that rebuilds it offline (e.g. a hub name replaced by the saved config)."""

    def export_spec(self) -> dict[str, Any]: ...


@runtime_checkable
class FilesBackbone(Protocol):
    """Keeps files beside the weights in a model folder (a tokenizer)."""

    def save_extra(self, folder: Path) -> None: ...

    def load_extra(self, folder: Path) -> None: ...


@runtime_checkable
class HeadNamingBackbone(Protocol):
    """Names the head a pooled task gets when its config names none (timm's feature maps: a pooling head)."""

    default_head: str


def export_spec(backbone: nn.Module, built_from: dict[str, Any]) -> dict[str, Any]:
    return backbone.export_spec() if isinstance(backbone, ExportingBackbone) else built_from


def save_extra(backbone: nn.Module, folder: Path) -> None:
    if isinstance(backbone, FilesBackbone):
        backbone.save_extra(folder)


def load_extra(backbone: nn.Module, folder: Path) -> None:
    if isinstance(backbone, FilesBackbone):
        backbone.load_extra(folder)


def default_head(backbone: nn.Module) -> str:
    return backbone.default_head if isinstance(backbone, HeadNamingBackbone) else "linear"


def feature_width(backbone: nn.Module) -> int:
    width = backbone.out_dim if isinstance(backbone, Backbone) else None
    if not isinstance(width, int):
        raise ConfigError(
            f"backbone {type(backbone).__name__} has no integer 'out_dim' (the width of its pooled features) "
            "for a pooled head; set self.out_dim in its __init__"
        )
    return width


@runtime_checkable
class BlockBackbone(Protocol):
    """A backbone computing ``finish(block(n-1)(... block(0)(stem(inputs))))``.

    ``block(i)`` is a module mapping the state to the next state; architectures deep-copy it for
    task-specific branches. ``drop_blocks(start)`` removes blocks ``start..`` from the backbone once
    an architecture owns copies of them, so no parameter is left unused. ``single_tensor_state()``
    says whether gradient flows between blocks through one tensor only (not, e.g., a list of the
    feature maps collected so far): then the state at a branch point is an exact representation
    for the gradient engine's ``rep`` space.
    """

    def num_blocks(self) -> int: ...

    def block_dims(self) -> list[int]: ...

    def stem(self, inputs: Any) -> Any: ...

    def block(self, index: int) -> nn.Module: ...

    def finish(self, state: Any) -> Any: ...

    def drop_blocks(self, start: int) -> None: ...

    def single_tensor_state(self) -> bool: ...


@runtime_checkable
class MultiScaleBackbone(Protocol):
    """A backbone whose features are one map per stage, coarser stage by stage (timm's
    ``features_only``): stage ``i`` is ``channels[i]`` wide, one location per ``strides[i]`` input
    pixels. Dense heads (detection's feature pyramid) are sized from these."""

    channels: list[int]
    strides: list[int]


#: modules per MLP block: Linear, LayerNorm, GELU, Dropout
_MLP_BLOCK = 4


@BACKBONES.register("mlp")
class MLPBackbone(nn.Module):
    """A stack of Linear -> LayerNorm -> GELU -> Dropout blocks for vector inputs (a BlockBackbone)."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.1) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("mlp backbone needs at least one hidden layer")
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        self.net = nn.Sequential(*layers)  # one flat Sequential: the weight names of saved models
        self.widths = [int(w) for w in hidden]
        self.out_dim = in_dim

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(self.stem(inputs))

    # -- BlockBackbone ---------------------------------------------------------------------------
    def num_blocks(self) -> int:
        return len(self.widths)

    def block_dims(self) -> list[int]:
        return list(self.widths)

    def stem(self, inputs: Tensor) -> Tensor:
        dtype = next((p.dtype for p in self.parameters()), torch.float32)
        return inputs.flatten(1).to(dtype)  # integer or float64 features: the weights' dtype

    def block(self, index: int) -> nn.Module:
        if not 0 <= index < len(self.net) // _MLP_BLOCK:
            raise IndexError(f"mlp block {index} is not in this backbone ({len(self.net) // _MLP_BLOCK} left)")
        return nn.Sequential(*self.net[index * _MLP_BLOCK : (index + 1) * _MLP_BLOCK])

    def finish(self, state: Tensor) -> Tensor:
        return state

    def drop_blocks(self, start: int) -> None:
        del self.net[start * _MLP_BLOCK :]

    def single_tensor_state(self) -> bool:
        return True
