"""Building what a training worker optimises (model, optimizer, schedule, loss scaler) and the
device features it runs with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from apcnet import APCNet
from apcnet.schedule import PolyLR
from pipeline.config.schema import ExperimentConfig, ModelSection, ScalingSection
from pipeline.train.settings import RunDescription
from pipeline.train.state import TrainingState


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


def build_training_model(
    model_config: ModelSection,
    run: RunDescription,
    features: DeviceFeatures,
    device: torch.device,
    seed: int,
    rank: int = 0,
) -> nn.Module:
    """A fresh APCNet for the run's classes, on `device`, with the resolved device features.

    The initial weights depend only on `seed`, so a run (or a Tune trial) is reproducible and
    every worker starts identical. Afterwards each rank reseeds differently so dropout masks
    are not the same on every worker.
    """
    torch.manual_seed(seed)
    model: nn.Module = APCNet(
        num_classes=len(run.class_names),
        backbone=model_config.backbone,
        pool_scales=model_config.pool_scales,
        gla=model_config.gla,
        fusion=model_config.fusion,
        aux=model_config.aux_loss_weight > 0,
        channels=model_config.channels,
        dropout=model_config.dropout,
        output_stride=model_config.output_stride,
        pretrained_backbone=model_config.pretrained_backbone,
    )
    if features.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if features.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed + 1 + rank)
    return model


def build_training_state(
    config: ExperimentConfig,
    run: RunDescription,
    features: DeviceFeatures,
    device: torch.device,
    *,
    rank: int,
    total_iterations: int,
) -> TrainingState:
    """A fresh training state: the model, its optimizer, the poly schedule over
    `total_iterations` steps and the fp16 loss scaler (a no-op unless autocast runs fp16)."""
    model = build_training_model(
        config.model, run, features, device, seed=config.data.seed, rank=rank
    )
    optimizer = build_optimizer(model, config)
    scheduler = PolyLR(
        optimizer,
        total_iters=total_iterations,
        power=config.schedule.power,
        min_lr=config.schedule.min_lr,
        warmup_iters=config.schedule.warmup_iterations,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=features.autocast_dtype == torch.float16)
    return TrainingState(model, optimizer, scheduler, scaler)


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    optimization = config.optimization
    if optimization.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=optimization.lr,
            momentum=optimization.momentum,
            weight_decay=optimization.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=optimization.lr, weight_decay=optimization.weight_decay
    )
