"""FCOS-style anchor-free dense detection head on a light FPN neck (Tian et al., 2019).

Every feature-map location predicts class scores, its distances to the four box sides (ltrb,
in pixels) and a centerness logit. The output is a dict of flat per-location tensors over all
pyramid levels plus the locations' coordinates and strides, which the loss and the decoder use.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork


def _tower(channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """FPN over the backbone stages, then shared conv towers (GroupNorm) on every level.

    Args:
        in_channels, strides: the backbone stages' channels and strides (timm ``feature_info``).
        num_classes: object classes (no background class: scores are per-class sigmoids).
        channels: FPN / tower width.
        num_convs: conv layers in each tower (classification and regression).
        groups: GroupNorm groups (must divide ``channels``).
        prior_prob: initial foreground probability, so focal loss starts near its optimum for background.
        levels: indices of the stages that get predictions (default: all); the FPN still fuses every
            stage, so coarse stages add context even where no object is large enough to need them.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        channels: int = 64,
        num_convs: int = 2,
        groups: int = 8,
        prior_prob: float = 0.01,
        levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"GroupNorm groups={groups} must divide channels={channels}")
        self.levels = list(range(len(strides))) if levels is None else [int(i) for i in levels]
        if not self.levels or not all(0 <= i < len(strides) for i in self.levels):
            raise ValueError(f"levels {levels} must be indices of the {len(strides)} backbone stages")
        self.in_strides = [int(s) for s in strides]
        self.strides = [self.in_strides[i] for i in self.levels]
        self.num_classes = num_classes
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.cls_tower = _tower(channels, num_convs, groups)
        self.reg_tower = _tower(channels, num_convs, groups)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        # box distances (4) and centerness (1) from one conv: tiny odd-width convs are slow on CPU
        self.reg_pred = nn.Conv2d(channels, 5, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))  # per-level regression scale
        for conv in (self.cls_logits, self.reg_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.in_strides):
            raise ValueError(f"FCOS head built for {len(self.in_strides)} stages, got {len(features)} feature maps")
        pyramid = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        cls, box, ctr, points, strides = [], [], [], [], []
        for level, stride in enumerate(self.strides):
            feature = pyramid[self.levels[level]]
            cls.append(self.cls_logits(self.cls_tower(feature)).flatten(2).transpose(1, 2))
            reg = self.reg_pred(self.reg_tower(feature)).flatten(2).transpose(1, 2)
            # exp keeps distances positive; clamp keeps a bad step from overflowing
            box.append(torch.exp((self.scales[level] * reg[..., :4].float()).clamp(max=10.0)) * stride)
            ctr.append(reg[..., 4])
            h, w = feature.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(h, device=feature.device), torch.arange(w, device=feature.device), indexing="ij"
            )
            points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride)
            strides.append(torch.full((h * w,), float(stride), device=feature.device))
        h0, w0 = features[0].shape[-2:]
        return {  # image size: what the first stage covers (the input size, up to rounding)
            "cls_logits": torch.cat(cls, 1),  # (B, N, C)
            "box_ltrb": torch.cat(box, 1),  # (B, N, 4) distances in pixels
            "centerness": torch.cat(ctr, 1),  # (B, N)
            "points": torch.cat(points),  # (N, 2) x, y in input pixels
            "strides": torch.cat(strides),  # (N,)
            "image_size": torch.tensor([h0 * self.in_strides[0], w0 * self.in_strides[0]], device=features[0].device),
        }
