"""The image modality: reading a patient's image file and the encoder that embeds it (vision's timm backbone).

Images are optional per patient: a missing or unreadable file gives ``None`` (the fusion then
uses its learned placeholder) with a warning, or a :class:`DataError` when ``strict``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import ConfigError, DataError

_MODES = {1: "L", 3: "RGB"}


def check_channels(channels: int) -> None:
    if channels not in _MODES:
        raise ConfigError(f"image_channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def load_image(
    path: str | Path | None, size: int, channels: int, strict: bool = False, where: str = ""
) -> Tensor | None:
    """A [channels, size, size] uint8 tensor (the encoder normalises it), or None when the image is absent."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(_MODES[channels]).resize((size, size), Image.BILINEAR)
            array = np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        message = f"{where}image {path} is missing or unreadable ({type(e).__name__}: {e})"
        if strict:
            raise DataError(f"{message}; fix the path or set strict_images=false to treat it as missing") from e
        warnings.warn(f"{message}; treated as a missing image", stacklevel=2)
        return None
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def image_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The image encoder's arguments; ``model`` is the deprecated spelling of vision's ``model_name``."""
    spec = dict(spec)
    if "model" in spec:
        if "model_name" in spec:
            raise ConfigError("image spec: give 'model_name' only ('model' is its deprecated spelling)")
        warnings.warn(
            "records backbone: image 'model' is deprecated; write 'model_name' (as vision's backbone does)",
            FutureWarning,
            stacklevel=3,
        )
        spec["model_name"] = spec.pop("model")
    if "model_name" not in spec:
        raise ConfigError("records backbone: the image spec needs a timm 'model_name'")
    return spec


class ImageEncoder(nn.Module):
    """vision's timm backbone (``vision.backbone.TimmBackbone``, normalisation built in), last stage
    average-pooled: images [B, C, H, W] (uint8, or floats in [0, 1]) -> [B, num_features].

    Args:
        model_name: a timm model name.
        in_chans: 1 (grayscale) or 3 (RGB).
        pretrained: load hub weights (needs network once, then timm's cache).
        checkpoint: load pretrained weights from a local file instead (offline).
    """

    def __init__(self, model_name: str, in_chans: int, pretrained: bool = False, checkpoint: str | None = None) -> None:
        super().__init__()
        import timm  # imported here: tabular-only models need neither timm nor vision

        from vision.backbone import TimmBackbone

        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ConfigError(f"image checkpoint {checkpoint} does not exist")
        mean = std = None  # 3 channels: the model's pretrained config
        cfg = timm.models.get_pretrained_cfg(model_name)
        if in_chans == 1 and cfg is not None:  # timm sums RGB filters into one: normalise with the channel mean
            mean, std = [sum(cfg.mean) / len(cfg.mean)], [sum(cfg.std) / len(cfg.std)]
        self.backbone = TimmBackbone(
            model_name,
            pretrained=pretrained,
            pretrained_file=checkpoint,
            out_indices=(-1,),
            model_kwargs={"in_chans": in_chans},
            mean=mean,
            std=std,
        )
        self.num_features: int = self.backbone.out_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)[-1].mean((2, 3))
