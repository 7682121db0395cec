"""APCNet: dilated ResNet backbone + APC head (+ FCN auxiliary head), torchvision-style output."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from apcnet.backbone import build_backbone
from apcnet.heads import APCHead, FCNAuxHead

REFERENCE_STAGE4_CHANNELS = 2048


def head_width(channels: int, stage4_channels: int) -> int:
    """Head width: `channels` scaled by the backbone's stage-4 width relative to 2048."""
    return max(1, channels * stage4_channels // REFERENCE_STAGE4_CHANNELS)


class APCNet(nn.Module):
    """Adaptive Pyramid Context Network (He et al., CVPR 2019).

    `model(images)` with images (N, 3, H, W), normalised (for reference-toolbox weights: RGB,
    `MMSEG_MEAN` / `MMSEG_STD` on 0-255 values), returns a dict:
    - "out": logits (N, num_classes, H, W), bilinearly resized (align_corners=False) to the
      input size, any H, W;
    - "aux": the auxiliary head's logits (N, num_classes, H, W), present whenever aux=True,
      in train and eval mode.

    Arguments:
    - backbone: "resnet50_v1c", "resnet101_v1c" (reference layout, deep stem), "resnet50",
      "resnet101" (torchvision layout) or "resnet18" (dilated basic blocks, for CPU demos).
    - pool_scales: one Adaptive Context Module per scale; () is the dilated-FCN baseline.
    - gla: Global-guided Local Affinity; False computes the affinity from local features only.
    - fusion: the fusion conv at the end of every ACM.
    - aux: the FCN auxiliary head on stage 3 (deep supervision).
    - channels: head width for a 2048-channel stage 4. Width rule: the APC head's width is
      `channels * stage4_channels // 2048`, so 512 for ResNet-50/101 and 128 for resnet18 by
      default; the auxiliary head's width is `stage3_channels // 4` (1024 -> 256 as in the
      reference, 256 -> 64 for resnet18).
    - dropout: Dropout2d probability before both classifiers.
    - output_stride: 8 (stages 3 and 4 dilated 2 and 4) or 16 (stage 4 dilated 2).
    - pretrained_backbone: None, a path to ImageNet weights (V1c: reference layout; others:
      torchvision layout), or "imagenet" (torchvision layouts; hub cache or download).

    `model.arguments` holds the constructor arguments except pretrained_backbone
    (JSON/YAML-serialisable), so `APCNet(**model.arguments)` rebuilds the architecture.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50_v1c",
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        gla: bool = True,
        fusion: bool = True,
        aux: bool = True,
        channels: int = 512,
        dropout: float = 0.1,
        output_stride: int = 8,
        pretrained_backbone: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"APCNet num_classes must be at least 1, got {num_classes!r}")
        pool_scales = [int(scale) for scale in pool_scales]
        self.arguments: dict[str, Any] = {
            "num_classes": int(num_classes),
            "backbone": backbone,
            "pool_scales": pool_scales,
            "gla": bool(gla),
            "fusion": bool(fusion),
            "aux": bool(aux),
            "channels": int(channels),
            "dropout": float(dropout),
            "output_stride": int(output_stride),
        }
        self.backbone = build_backbone(backbone, output_stride, pretrained_backbone)
        self.decode_head = APCHead(
            self.backbone.stage4_channels,
            head_width(channels, self.backbone.stage4_channels),
            num_classes,
            pool_scales,
            gla=gla,
            fusion=fusion,
            dropout=dropout,
        )
        self.aux_head = (
            FCNAuxHead(
                self.backbone.stage3_channels,
                self.backbone.stage3_channels // 4,
                num_classes,
                dropout=dropout,
            )
            if aux
            else None
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (N, 3, H, W) -> {"out": (N, K, H, W)[, "aux": (N, K, H, W)]}."""
        features = self.backbone(images)
        result = {"out": _at_input_size(self.decode_head(features.stage4), images)}
        if self.aux_head is not None:
            result["aux"] = _at_input_size(self.aux_head(features.stage3), images)
        return result

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> the main head's logits (N, K, H, W), `forward(images)["out"]`
        without computing the auxiliary head: the inference-only pass (what exported files
        compute)."""
        return _at_input_size(self.decode_head(self.backbone(images).stage4), images)


def _at_input_size(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Logits (N, K, h, w) bilinearly resized (align_corners=False) to the images' H, W."""
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def count_parameters(module: nn.Module | None) -> int:
    """Learnable parameters of a module (BatchNorm running statistics excluded); 0 for None."""
    if module is None:
        return 0
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
