"""Reading image files: always 3-channel RGB uint8, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: str | Path, where: str = "") -> torch.Tensor:
    """(3, H, W) uint8; grayscale, palette and RGBA images are converted to RGB (alpha dropped)."""
    path = Path(path)
    context = f" ({where})" if where else ""
    if not path.is_file():
        raise DataError(f"image file {path} does not exist{context}")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}{context}: {e}; is it a valid image file?") from e
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
