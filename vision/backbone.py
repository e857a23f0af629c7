"""A timm model as a multi-scale backbone: ``features_only`` feature maps, normalisation built in.

The backbone takes uint8 (or [0, 1] float) images and normalises them with the mean/std of the
model's pretrained config, so a saved model carries its own preprocessing. ``export_spec`` pins
``pretrained=False`` and the mean/std: ``JointModel.from_pretrained`` rebuilds the architecture
offline and the weights come from ``model.safetensors``.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from core.backbones import BACKBONES
from core.errors import ConfigError


class Stage(nn.Module):
    """The body's modules up to one returned stage: ``(x, maps)`` -> ``(y, maps + [y])``."""

    def __init__(self, modules: nn.Sequential) -> None:
        super().__init__()
        self.modules_ = modules

    def forward(self, state: tuple[Tensor, list[Tensor]]) -> tuple[Tensor, list[Tensor]]:
        y = self.modules_(state[0])
        return y, [*state[1], y]


@BACKBONES.register("timm")
class TimmBackbone(nn.Module):
    """Any timm model through ``timm.create_model(name, features_only=True, out_indices=...)``.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``mobilenetv3_small_100``.
        pretrained: load hub weights (needs network the first time, then timm's cache).
        pretrained_file: load weights from a local file instead (offline); implies pretrained.
        out_indices: which feature stages to return (timm's ``feature_info`` indices).
        model_kwargs: extra arguments of the timm model (e.g. ``channels`` of a ResNet).
        mean, std: input normalisation; default: the model's pretrained config.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        out_indices: Sequence[int] = (2, 3, 4),
        model_kwargs: dict[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            raise ConfigError(f"unknown timm model '{model_name}'; close names: {', '.join(close) or '(none)'}")
        self.model_name, self.out_indices = model_name, [int(i) for i in out_indices]
        self.model_kwargs = dict(model_kwargs or {})
        overlay = {"file": pretrained_file} if pretrained_file else None
        try:
            self.body = timm.create_model(
                model_name,
                pretrained=pretrained or pretrained_file is not None,
                pretrained_cfg_overlay=overlay,
                features_only=True,
                out_indices=tuple(self.out_indices),
                **self.model_kwargs,
            )
        except (IndexError, TypeError) as e:
            raise ConfigError(f"timm model '{model_name}' rejected out_indices={self.out_indices} / kwargs: {e}") from e
        cfg = self.body.pretrained_cfg
        self.mean_values = [float(v) for v in (mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5)))]
        self.std_values = [float(v) for v in (std if std is not None else cfg.get("std", (0.5, 0.5, 0.5)))]
        # non-persistent: they live in the spec (JSON), not in the weights
        self.register_buffer("mean", torch.tensor(self.mean_values).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.std_values).view(1, -1, 1, 1), persistent=False)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        self.out_dim = self.channels[-1]  # pooled heads read the last stage
        self.default_head = "pooled"  # features are maps: a head that expects a vector would fail in F.linear

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.body(self._normalise(images))

    def _normalise(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    # -- BlockBackbone (core.backbones): one block per returned stage, for the sharing architectures --
    # Block i runs the body's modules up to the i-th returned stage and appends that feature map to
    # the state ``(x, [maps so far])``; ``finish`` returns the maps, as ``forward`` does.
    def _stages(self) -> list[list[str]]:
        returned = getattr(self.body, "return_layers", None)
        if returned is None:
            raise ConfigError(
                f"timm model '{self.model_name}' builds its features with hooks, so its stages cannot be split; "
                "use architecture 'hard' with it"
            )
        stages, current = [], []
        for name in self.body.keys():
            current.append(name)
            if name in returned:
                stages.append(current)
                current = []
        return stages

    def num_blocks(self) -> int:
        return len(self._stages())

    def block_dims(self) -> list[int]:
        return list(self.channels)

    def stem(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self._normalise(images), []

    def block(self, index: int) -> nn.Module:
        return Stage(nn.Sequential(OrderedDict((n, self.body[n]) for n in self._stages()[index])))

    def finish(self, state: tuple[Tensor, list[Tensor]]) -> list[Tensor]:
        return state[1]

    def drop_blocks(self, start: int) -> None:
        for stage in self._stages()[start:]:
            for name in stage:
                del self.body[name]

    def single_tensor_state(self) -> bool:
        return False  # the maps collected so far: earlier maps feed later ones and the heads

    def export_spec(self) -> dict[str, Any]:
        return {
            "name": "timm",
            "model_name": self.model_name,
            "pretrained": False,
            "out_indices": self.out_indices,
            "model_kwargs": self.model_kwargs,
            "mean": self.mean_values,
            "std": self.std_values,
        }
