"""Adaptive Context Module (ACM) with Global-guided Local Affinity (GLA), one per pyramid scale."""

import torch
import torch.nn.functional as F
from torch import nn

from apcnet.norm import SingleValueSafeBatchNorm2d
from apcnet.pooling import adaptive_avg_pool2d


class ConvBNReLU(nn.Module):
    """Conv2d without bias, BatchNorm, ReLU: (N, in_channels, H, W) -> (N, out_channels, H', W').

    Submodules are named `conv` and `bn` so reference-toolbox keys (`*.conv.weight`,
    `*.bn.*`) map one to one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        norm_class: type[nn.BatchNorm2d] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = norm_class(out_channels)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class AdaptiveContextModule(nn.Module):
    """One ACM at pyramid scale s: features X (N, in_channels, h, w) -> context z (N, c, h, w).

    - y: X adaptively average-pooled to s x s, reduced to c channels (s*s vectors).
    - x: X reduced to c channels (h*w vectors).
    - g: global average of x, then a conv (only with gla=True).
    - affinity A = sigmoid(Conv1x1_with_bias(x + g)): (N, h*w, s*s), one weight per sub-region.
    - z = A @ y, then residual conv, ReLU(z + x), and the fusion conv (when fusion=True).

    gla=False is the paper's ablation: the affinity comes from x alone and there is no
    `global_info` conv. The two BatchNorms that see one value per image at batch size 1 (the
    s=1 sub-region branch and g) use `SingleValueSafeBatchNorm2d`. Both pools go through
    `apcnet.pooling.adaptive_avg_pool2d`: PyTorch's op in eager mode, an equivalent that is
    right at every input size in exported programs.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        pool_scale: int,
        gla: bool = True,
        fusion: bool = True,
    ) -> None:
        super().__init__()
        if pool_scale < 1:
            raise ValueError(f"pool scales must be positive integers, got {pool_scale!r}")
        self.pool_scale = pool_scale
        self.channels = channels
        self.pooled_redu_conv = ConvBNReLU(
            in_channels, channels, norm_class=SingleValueSafeBatchNorm2d
        )
        self.input_redu_conv = ConvBNReLU(in_channels, channels)
        self.global_info = (
            ConvBNReLU(channels, channels, norm_class=SingleValueSafeBatchNorm2d) if gla else None
        )
        self.gla = nn.Conv2d(channels, pool_scale * pool_scale, 1)
        self.residual_conv = ConvBNReLU(channels, channels)
        self.fusion_conv = ConvBNReLU(channels, channels) if fusion else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        pooled = self.pooled_redu_conv(adaptive_avg_pool2d(features, self.pool_scale))
        local = self.input_redu_conv(features)
        # (N, c, s, s) -> (N, s*s, c): one row per sub-region.
        sub_regions = pooled.flatten(2).transpose(1, 2)
        guide = local
        if self.global_info is not None:
            # g is (N, c, 1, 1); adding broadcasts it to every position (what a bilinear
            # resize of a 1x1 map gives).
            guide = local + self.global_info(adaptive_avg_pool2d(local, 1))
        # (N, s*s, h, w) -> (N, h*w, s*s): one affinity vector per position.
        affinity = torch.sigmoid(self.gla(guide)).flatten(2).transpose(1, 2)
        context = torch.matmul(affinity, sub_regions)  # (N, h*w, c)
        context = context.transpose(1, 2).reshape(batch, self.channels, height, width)
        out = F.relu(self.residual_conv(context) + local)
        if self.fusion_conv is not None:
            out = self.fusion_conv(out)
        return out
