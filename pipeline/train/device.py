"""The device features a training worker runs with: mixed precision, memory format and
SyncBatchNorm, resolved from the config's "auto" settings for the worker's device, and the one
autocast block that training and validation share."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.config.schema import ScalingSection


@dataclass(frozen=True)
class DeviceFeatures:
    """Resolved "auto" settings: autocast dtype (None = fp32), channels_last, SyncBatchNorm."""

    autocast_dtype: torch.dtype | None
    channels_last: bool
    sync_batchnorm: bool


def device_features(
    scaling: ScalingSection, device: torch.device, world_size: int
) -> DeviceFeatures:
    """Mixed precision and channels_last are GPU features; "auto" turns them on exactly there.

    SyncBatchNorm only works across GPU workers (it refuses CPU tensors), so on CPU the model's
    own single-value-safe BatchNorm stays.
    """
    on_gpu = device.type == "cuda"
    precision = scaling.mixed_precision
    if precision == "auto":
        precision = "none" if not on_gpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    channels_last = on_gpu if scaling.channels_last == "auto" else bool(scaling.channels_last)
    sync = (
        (on_gpu and world_size > 1)
        if scaling.sync_batchnorm == "auto"
        else bool(scaling.sync_batchnorm)
    )
    if sync and not on_gpu:
        raise ValueError(
            "scaling.sync_batchnorm is true but workers run on CPU: SyncBatchNorm needs GPU "
            "workers; set scaling.sync_batchnorm to auto or false"
        )
    return DeviceFeatures(autocast_dtype, channels_last, sync and world_size > 1)


def autocast(features: DeviceFeatures, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to `features.autocast_dtype` on `device`'s type (a no-op context for fp32)."""
    return torch.autocast(
        device.type, dtype=features.autocast_dtype, enabled=features.autocast_dtype is not None
    )
