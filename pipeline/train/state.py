"""A training run's full state: built fresh for a run, saved to and restored from one Ray
checkpoint folder.

The folder holds `checkpoint.pt`, written by `apcnet.checkpoint.save_checkpoint` so the
evaluation job and `apcnet` users read it like any model checkpoint: weights, class names,
palette and normalisation, plus the optimizer state and, under `extra`, the run's name and
everything a resumed run needs (scaler and scheduler state, epoch, global iteration, the
resolved config, the data manifest path).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config.schema import ExperimentConfig, ModelSection
from pipeline.storage import CHECKPOINT_FILE, CHECKPOINT_FOLDER_PREFIX
from pipeline.train.settings import CheckpointMetadata

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.train.device import DeviceFeatures

# The driver imports this module to read a run's progress before it starts training, and must
# not import torch for that (about 1.2 s before the first step): torch and apcnet.checkpoint are
# imported where a checkpoint is written or read.


def checkpoint_folder_name(epoch: int, notice_at_iteration: int | None = None) -> str:
    """The checkpoint folder written after `epoch` in the run folder: `epoch_0004`; one written
    on a preemption notice during the next epoch, at global iteration 123:
    `epoch_0004_notice_000123`."""
    name = f"{CHECKPOINT_FOLDER_PREFIX}{epoch:04d}"
    return name if notice_at_iteration is None else f"{name}_notice_{notice_at_iteration:06d}"


def completed_epochs_of(folder_name: str) -> int:
    """The whole epochs a checkpoint folder named by `checkpoint_folder_name` completed:
    4 for both `epoch_0004` and `epoch_0004_notice_000123`."""
    return int(folder_name.removeprefix(CHECKPOINT_FOLDER_PREFIX).split("_", 1)[0])


@dataclass(frozen=True)
class Progress:
    """How far a run got: the last completed epoch (0 = none), optimisation steps so far, the
    metrics reported for every completed epoch, in order, and the steps of the next epoch
    already trained (0 but for a checkpoint saved on a preemption notice mid-epoch)."""

    epoch: int = 0
    global_iteration: int = 0
    history: tuple[dict[str, float], ...] = ()
    steps_into_epoch: int = 0


@dataclass(frozen=True)
class TrainingState:
    """Everything a worker optimises and a resumed run continues from, as one object.

    `model` is the bare model (not the DDP wrapper), so a saved checkpoint loads into a plain
    APCNet. The torch objects change in place as training steps; `progress` is replaced by
    `after_epoch`, and `restored_from` returns the state a checkpoint holds.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress = Progress()

    @property
    def learning_rate(self) -> float:
        """The optimizer's current learning rate (of its first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def after_epoch(self, epoch: int, iterations: int, metrics: dict[str, float]) -> TrainingState:
        """The state once `epoch` finished after `iterations` steps, reporting `metrics`."""
        progress = Progress(
            epoch,
            self.progress.global_iteration + iterations,
            (*self.progress.history, metrics),
        )
        return replace(self, progress=progress)

    def during_epoch(self, global_iteration: int, steps_into_epoch: int) -> TrainingState:
        """The state `steps_into_epoch` steps into the epoch after `progress.epoch`, at
        `global_iteration`: what a checkpoint on a preemption notice records."""
        progress = replace(
            self.progress, global_iteration=global_iteration, steps_into_epoch=steps_into_epoch
        )
        return replace(self, progress=progress)

    def save(self, folder: Path, metadata: CheckpointMetadata) -> Path:
        """Write `<folder>/checkpoint.pt` (atomically, by `apcnet.checkpoint.save_checkpoint`);
        returns its path."""
        from apcnet.checkpoint import save_checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(
            folder / CHECKPOINT_FILE,
            self.model,
            class_names=metadata.class_names,
            palette=metadata.palette,
            ignore_index=metadata.ignore_index,
            mean=metadata.mean,
            std=metadata.std,
            optimizer_state=self.optimizer.state_dict(),
            extra={
                "run_name": metadata.run_name,
                "scaler": self.scaler.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": self.progress.epoch,
                "global_iteration": self.progress.global_iteration,
                "steps_into_epoch": self.progress.steps_into_epoch,
                "history": [dict(metrics) for metrics in self.progress.history],
                "config": metadata.config,
                "manifest_path": metadata.manifest_path,
            },
        )

    def restored_from(self, folder: Path) -> TrainingState:
        """Load weights and optimizer/scheduler/scaler state from `folder` into this state's
        objects; returns the state with the checkpoint's progress."""
        path = folder / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint folder {folder} has no {CHECKPOINT_FILE}; it was not written by "
                "pipeline.train.state.TrainingState.save"
            )
        from apcnet.checkpoint import load_checkpoint

        loaded = load_checkpoint(path)
        self.model.load_state_dict(loaded.state_dict)
        if loaded.optimizer_state is not None:
            self.optimizer.load_state_dict(loaded.optimizer_state)
        self.scheduler.load_state_dict(loaded.extra["scheduler"])
        self.scaler.load_state_dict(loaded.extra["scaler"])
        return replace(self, progress=_progress(loaded.extra))


def build_training_model(
    model_config: ModelSection,
    metadata: CheckpointMetadata,
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
    import torch
    from torch import nn

    from apcnet import APCNet

    torch.manual_seed(seed)
    model: nn.Module = APCNet(
        num_classes=len(metadata.class_names),
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
    metadata: CheckpointMetadata,
    features: DeviceFeatures,
    device: torch.device,
    *,
    rank: int,
    total_iterations: int,
) -> TrainingState:
    """A fresh training state: the model, its optimizer, the poly schedule over
    `total_iterations` steps and the fp16 loss scaler (a no-op unless autocast runs fp16)."""
    import torch

    from apcnet.schedule import PolyLR

    model = build_training_model(
        config.model, metadata, features, device, seed=config.data.seed, rank=rank
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
    import torch

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


def read_progress(checkpoint_file: str | Path) -> Progress:
    """The progress stored in a `checkpoint.pt` (local path or s3:// / gs:// URI), without
    building a model."""
    with storage.local_file(checkpoint_file) as path:
        from apcnet.checkpoint import load_checkpoint

        return _progress(load_checkpoint(path).extra)


def _progress(extra: dict[str, Any]) -> Progress:
    return Progress(
        epoch=int(extra["epoch"]),
        global_iteration=int(extra["global_iteration"]),
        history=tuple(dict(metrics) for metrics in extra.get("history", ())),
        steps_into_epoch=int(extra.get("steps_into_epoch", 0)),
    )
