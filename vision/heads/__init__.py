"""Vision heads: pooled image-level classification and the FCOS-style detection head."""

from .decode import decode
from .fcos import FCOSHead
from .fcos_loss import fcos_loss
from .pooled import PooledHead

__all__ = ["FCOSHead", "PooledHead", "decode", "fcos_loss"]
