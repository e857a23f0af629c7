"""The ``records`` backbone: tabular and/or image encoders, fused, robust to a missing modality.

Each modality is projected to ``dim``; where a patient lacks one (no image on file), a learned
placeholder vector stands in, so the heads always see a well-defined input and the model
learns what "no image" means. Fusion is a registered strategy (``concat`` or ``gated``).

Inputs (a batch dict): ``numeric`` [B, Cn] raw floats with NaN, ``categorical`` [B, Cc] codes,
``image`` [B, C, H, W] uint8 and ``image_present`` [B] bool when the image modality is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from core.backbones import BACKBONES
from core.errors import ConfigError
from core.registry import Registry
from core.tabular.encoders import TABULAR_ENCODERS
from core.tabular.schema import TabularSchema

from .imaging import ImageEncoder, check_channels, image_model_spec

#: fusion strategies: ``(dim, modalities) -> nn.Module`` mapping [B, M, dim] + mask [B, M] to [B, out_dim]
FUSIONS: Registry[nn.Module] = Registry("fusion")

MODALITIES = ("tabular", "image")


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """Concatenate the modality vectors (placeholders included): out_dim = dim * modalities."""

    def __init__(self, dim: int, modalities: int) -> None:
        super().__init__()
        self.out_dim = dim * modalities

    def forward(self, features: Tensor, present: Tensor) -> Tensor:
        return features.flatten(1)


@FUSIONS.register("gated")
class GatedFusion(nn.Module):
    """Softmax-gated sum over the modalities a patient has: out_dim = dim.

    A missing modality gets no weight unless the patient has none, when the placeholders are averaged.
    """

    def __init__(self, dim: int, modalities: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.out_dim = dim

    def forward(self, features: Tensor, present: Tensor) -> Tensor:
        logits = self.gate(features).squeeze(-1)
        usable = present | ~present.any(1, keepdim=True)
        weights = logits.masked_fill(~usable, float("-inf")).softmax(1)
        return (weights.unsqueeze(-1) * features).sum(1)


@BACKBONES.register("records")
class RecordsBackbone(nn.Module):
    """Patient records (tabular), images, or both, fused into one feature vector.

    Args:
        schema: the fitted tabular preprocessing (supplied by the data; see ``medical.data``).
        modalities: any of ``tabular``, ``image``.
        dim: width of each modality's projection.
        tabular: tabular encoder spec, ``{name: mlp | ft_transformer, **kwargs}``.
        image: image encoder spec ``{model_name: <timm name>, pretrained, checkpoint}`` (as vision's backbone).
        image_channels: 1 (grayscale) or 3 (RGB), supplied by the data.
        fusion: ``concat`` or ``gated``.
    """

    def __init__(
        self,
        schema: dict[str, Any] | None = None,
        modalities: Sequence[str] = ("tabular",),
        dim: int = 128,
        tabular: dict[str, Any] | None = None,
        image: dict[str, Any] | None = None,
        image_channels: int = 3,
        fusion: str = "concat",
    ) -> None:
        super().__init__()
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ConfigError(f"records backbone: modalities must be distinct values of {MODALITIES}, got {modalities}")
        self.modalities = list(modalities)
        self.dim, self.fusion_name, self.image_channels = dim, fusion, image_channels
        self.tabular_spec = dict(tabular or {"name": "mlp"})
        self.image_spec = image_model_spec(image or {"model_name": "resnet18"})
        self.schema_json = schema
        if "tabular" in self.modalities:
            if schema is None:
                raise ConfigError("records backbone: the tabular modality needs a fitted schema (from the data)")
            self.tabular = TABULAR_ENCODERS.build(self.tabular_spec, schema=TabularSchema.from_json(schema), dim=dim)
        if "image" in self.modalities:
            check_channels(image_channels)
            self.image = ImageEncoder(in_chans=image_channels, **self.image_spec)
            self.image_proj = nn.Sequential(nn.Linear(self.image.num_features, dim), nn.LayerNorm(dim))
        # learned stand-ins for a modality a patient does not have
        self.placeholder = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.fusion = FUSIONS.build(fusion, dim=dim, modalities=len(self.modalities))
        self.out_dim: int = self.fusion.out_dim

    @property
    def schema(self) -> TabularSchema | None:
        return TabularSchema.from_json(self.schema_json) if self.schema_json is not None else None

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        features, present = [], []
        if "tabular" in self.modalities:
            tab = self.tabular(inputs["numeric"], inputs["categorical"])
            features.append(tab)
            present.append(torch.ones(len(tab), dtype=torch.bool, device=tab.device))
        if "image" in self.modalities:
            if "image" not in inputs:
                raise ConfigError("records backbone uses images but the batch has none: the data has no image_column")
            has = inputs["image_present"].bool()
            # the encoder runs on the whole batch (absent images are zeros) to keep shapes static
            features.append(self.image_proj(self.image(inputs["image"])))
            present.append(has)
        stacked, mask = torch.stack(features, 1), torch.stack(present, 1)
        stacked = torch.where(mask.unsqueeze(-1), stacked, self.placeholder.to(stacked.dtype))
        return self.fusion(stacked, mask)

    # -- BlockBackbone (core.backbones): the tabular encoder's blocks, when records are tabular only --
    def _blocks_encoder(self) -> nn.Module:
        if self.modalities != ["tabular"]:
            raise ConfigError(
                "records backbone exposes blocks only with modalities [tabular] (the image branch is fused after "
                f"them); got {self.modalities}. Use architecture 'hard' or an expert architecture (mmoe, cgc, ple, "
                "dselect_k) with images."
            )
        return self.tabular

    def num_blocks(self) -> int:
        return len(self._blocks_encoder().blocks)

    def block_dims(self) -> list[int]:
        return self._blocks_encoder().block_dims()

    def stem(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._blocks_encoder().embed(inputs["numeric"], inputs["categorical"])

    def block(self, index: int) -> nn.Module:
        return self._blocks_encoder().block(index)

    def finish(self, state: Tensor) -> Tensor:
        tab = self._blocks_encoder().finish(state)
        present = torch.ones(len(tab), 1, dtype=torch.bool, device=tab.device)
        return self.fusion(tab.unsqueeze(1), present)  # one modality: no placeholder stands in

    def drop_blocks(self, start: int) -> None:
        del self._blocks_encoder().blocks[start:]

    def single_tensor_state(self) -> bool:
        return True

    def export_spec(self) -> dict[str, Any]:
        """JSON that rebuilds this backbone offline: weights come from model.safetensors, never a hub."""
        image = {**self.image_spec, "pretrained": False}
        image.pop("checkpoint", None)
        return {
            "name": "records",
            "schema": self.schema_json,
            "modalities": self.modalities,
            "dim": self.dim,
            "tabular": self.tabular_spec,
            "image": image,
            "image_channels": self.image_channels,
            "fusion": self.fusion_name,
        }
