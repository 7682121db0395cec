"""The APC decode head and the FCN auxiliary (deep supervision) head."""

from collections.abc import Sequence

import torch
from torch import nn

from apcnet.context import AdaptiveContextModule, ConvBNReLU


def _init_classifier(classifier: nn.Conv2d) -> None:
    # Small logits at the start of training, as in the reference heads.
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


class APCHead(nn.Module):
    """Stage-4 features X (N, in_channels, h, w) -> logits (N, num_classes, h, w).

    concat [X, ACM_s(X) for s in pool_scales] -> 3x3 ConvBNReLU to `channels` -> Dropout2d ->
    1x1 Conv2d with bias to num_classes. pool_scales=() is the dilated-FCN baseline (the
    concat is just X).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        gla: bool = True,
        fusion: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.acm_modules = nn.ModuleList(
            AdaptiveContextModule(in_channels, channels, scale, gla=gla, fusion=fusion)
            for scale in pool_scales
        )
        concat_channels = in_channels + len(pool_scales) * channels
        self.bottleneck = ConvBNReLU(concat_channels, channels, kernel_size=3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_classifier(self.conv_seg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pyramid = [features] + [acm(features) for acm in self.acm_modules]
        fused = self.bottleneck(torch.cat(pyramid, dim=1))
        return self.conv_seg(self.dropout(fused))


class FCNAuxHead(nn.Module):
    """Stage-3 features (N, in_channels, h, w) -> auxiliary logits (N, num_classes, h, w).

    3x3 ConvBNReLU to `channels` -> Dropout2d -> 1x1 Conv2d with bias to num_classes.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(in_channels, channels, kernel_size=3))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_classifier(self.conv_seg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(features)))
