"""BatchNorm that survives a single value per channel in train mode."""

import torch
import torch.nn.functional as F
from torch import nn


class SingleValueSafeBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that falls back to its running statistics when a batch holds one value.

    Two BatchNorms of the Adaptive Context Module see one 1x1 vector per image (the s=1
    sub-region branch and the global vector g). With one image per worker, plain BatchNorm
    raises "Expected more than 1 value per channel when training". Here, in train mode:

    - more than one value per channel (N*H*W > 1): ordinary batch statistics, running
      statistics updated, exactly like `nn.BatchNorm2d`;
    - exactly one value per channel: normalise with the running statistics and leave them
      untouched (a single value carries no variance to learn from). The affine weight and
      bias still receive gradients.

    It stays an `nn.BatchNorm2d` subclass with the same state_dict keys, so checkpoints load
    unchanged and `nn.SyncBatchNorm.convert_sync_batchnorm` replaces it for multi-GPU
    training, where the count across GPUs is larger than one.

    Input and output: (N, C, H, W).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        values_per_channel = input.numel() // max(input.shape[1], 1)
        if not self.training or values_per_channel > 1:
            return super().forward(input)
        if self.running_mean is None or self.running_var is None:
            raise RuntimeError(
                "SingleValueSafeBatchNorm2d got one value per channel in train mode but was "
                "built with track_running_stats=False, so it has no running statistics to "
                "fall back on; build it with track_running_stats=True or use batches of more "
                "than one value per channel."
            )
        self._check_input_dim(input)
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )
