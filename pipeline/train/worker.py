"""The per-worker training loop that Ray Train runs on every worker.

One epoch: train on this worker's share of the train split (DDP averages gradients), validate
every `evaluation.every_epochs` epochs on this worker's disjoint share of the val split
(intersection/union counts summed over workers, so every val sample counts exactly once),
log the epoch's metrics to MLflow from rank 0, then `ray.train.report` the metrics with a
checkpoint. A replayed epoch after a restart is logged again and skipped by the tracker, which
ignores steps it already has, so MLflow holds every epoch exactly once.

A NaN or infinite loss is not a worker failure: all workers agree on it (all-reduce), log
`nonfinite_loss=1` to MLflow and return that status to the driver without a checkpoint, so Ray
does not restart anything and the last good checkpoint stays the latest.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from apcnet.loss import segmentation_loss
from apcnet.metrics import MeanIoU
from apcnet.schedule import PolyLR
from pipeline.config.schema import ExperimentConfig
from pipeline.train.fault_injection import maybe_kill_worker
from pipeline.train.model import build_training_model, device_features
from pipeline.train.state import (
    Progress,
    RunDescription,
    restore_training_state,
    save_training_state,
)

COMPLETED_STATUS = "completed"
NONFINITE_STATUS = "nonfinite_loss"
TRAIN_SPLIT = "train"
VAL_SPLIT = "val"


@dataclass(frozen=True)
class LoopSettings:
    """Everything a worker needs, computed once by the driver (picklable)."""

    config: ExperimentConfig
    run_name: str
    run_folder: str
    description: RunDescription
    ignore_index: int
    iterations_per_epoch: int
    total_epochs: int
    total_iterations: int
    tracking_uri: str | None
    experiment_name: str | None
    tracking_tags: dict[str, str]


@dataclass
class EpochResult:
    train_loss: float
    images: int
    iterations: int
    nonfinite_at_iteration: int | None


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point: `train_loop_config={"settings": LoopSettings(...)}`.

    Returns (rank 0's value becomes `Result.return_value`) {"status": "completed"} or
    {"status": "nonfinite_loss", "epoch": e, "global_iteration": i}.
    """
    settings: LoopSettings = loop_config["settings"]
    config = settings.config
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    features = device_features(config.scaling, device, world_size)

    model = build_training_model(
        config.model,
        settings.description,
        features,
        device,
        seed=config.data.seed,
        rank=rank,
    )
    optimizer = _build_optimizer(model, config)
    scheduler = PolyLR(
        optimizer,
        total_iters=settings.total_iterations,
        power=config.schedule.power,
        min_lr=config.schedule.min_lr,
        warmup_iters=config.schedule.warmup_iterations,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=features.autocast_dtype == torch.float16)
    progress = Progress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress = restore_training_state(
                Path(folder), model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
            )
        _say(rank, f"resuming {settings.run_name} after epoch {progress.epoch}")
    bare_model = model
    model = ray.train.torch.prepare_model(model) if world_size > 1 else model

    tracker = _open_tracker(settings) if rank == 0 and config.tracking.enabled else None
    train_shard = ray.train.get_dataset_shard(TRAIN_SPLIT)
    val_shard = ray.train.get_dataset_shard(VAL_SPLIT)
    per_worker_batch = config.optimization.batch_size // world_size
    first_step_time: list[float] = []

    for epoch in range(progress.epoch + 1, settings.total_epochs + 1):
        started = time.perf_counter()
        model.train()
        epoch_result = _train_one_epoch(
            model,
            optimizer,
            scheduler,
            scaler,
            train_shard.iter_torch_batches(batch_size=per_worker_batch, drop_last=True),
            settings=settings,
            features=features,
            device=device,
            start_iteration=progress.global_iteration,
            first_step_time=first_step_time,
        )
        previous = progress
        progress = Progress(epoch, previous.global_iteration + epoch_result.iterations)
        if epoch_result.nonfinite_at_iteration is not None:
            stopped = {
                "epoch": epoch,
                "global_iteration": epoch_result.nonfinite_at_iteration,
            }
            if tracker is not None:
                tracker.log_metrics({"nonfinite_loss": 1}, step=epoch)
            _say(
                rank, f"non-finite loss in epoch {epoch} at iteration {stopped['global_iteration']}"
            )
            return {"status": NONFINITE_STATUS, **stopped}
        epoch_time = time.perf_counter() - started
        metrics: dict[str, float] = {
            "epoch": epoch,
            "global_iteration": progress.global_iteration,
            "train_loss": epoch_result.train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": epoch_result.images / epoch_time,
            "epoch_time_s": epoch_time,
            "first_step_unix_s": first_step_time[0] if first_step_time else float("nan"),
        }
        is_last = epoch == settings.total_epochs
        if epoch % config.evaluation.every_epochs == 0 or is_last:
            metrics.update(_validate(bare_model, val_shard, settings, features, device, world_size))
        if tracker is not None:
            tracker.log_metrics(_tracked(metrics), step=epoch)
        _say(rank, _epoch_line(metrics, settings.total_epochs))
        maybe_kill_worker(
            config.testing,
            settings.run_folder,
            settings.iterations_per_epoch,
            epoch,
            rank,
            after_metrics_logged=True,
        )
        progress = Progress(epoch, progress.global_iteration, (*previous.history, metrics))
        _report_with_checkpoint(
            metrics, rank, bare_model, optimizer, scheduler, scaler, progress, settings
        )
        if progress.global_iteration >= settings.total_iterations:
            break
    return {"status": COMPLETED_STATUS}


def _train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: PolyLR,
    scaler: torch.amp.GradScaler,
    batches: Any,
    *,
    settings: LoopSettings,
    features: Any,
    device: torch.device,
    start_iteration: int,
    first_step_time: list[float],
) -> EpochResult:
    """Train over this worker's batches; losses are averaged over workers every step."""
    config = settings.config
    loss_sum, iterations, images_seen = 0.0, 0, 0
    for batch in batches:
        iteration = start_iteration + iterations + 1
        if iteration > settings.total_iterations:
            break
        maybe_kill_worker(
            config.testing,
            settings.run_folder,
            settings.iterations_per_epoch,
            (iteration - 1) // settings.iterations_per_epoch + 1,
            None,
            mid_epoch=iteration,
        )
        images, masks = _batch_to_device(batch, device, features.channels_last)
        with torch.autocast(
            device.type, dtype=features.autocast_dtype, enabled=features.autocast_dtype is not None
        ):
            outputs = model(images)
            loss = segmentation_loss(
                outputs,
                masks,
                aux_weight=config.model.aux_loss_weight,
                ignore_index=settings.ignore_index,
            )
        if config.testing.nan_at_iteration == iteration:
            loss = loss * float("nan")
        # One all-reduce per step: the logged loss is the global mean, and every worker sees a
        # non-finite loss on any worker, so they all stop at the same step.
        global_loss = _all_reduce_mean(loss.detach().float())
        if not math.isfinite(global_loss):
            return EpochResult(loss_sum / max(iterations, 1), images_seen, iterations, iteration)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.optimization.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.optimization.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if not first_step_time:
            first_step_time.append(time.time())
        loss_sum += global_loss
        iterations += 1
        images_seen += images.shape[0]
    world_images = images_seen * (dist.get_world_size() if dist.is_initialized() else 1)
    return EpochResult(loss_sum / max(iterations, 1), world_images, iterations, None)


@torch.no_grad()
def _validate(
    model: nn.Module,
    val_shard: Any,
    settings: LoopSettings,
    features: Any,
    device: torch.device,
    world_size: int,
) -> dict[str, float]:
    """Exact mIoU over the whole val split: per-worker counts summed over workers."""
    model.eval()
    class_names = settings.description.class_names
    metric = MeanIoU(len(class_names), settings.ignore_index)
    # Val images keep their own sizes; rows of one batch are stacked only when they match.
    for batch in val_shard.iter_batches(
        batch_size=settings.config.evaluation.batch_size, batch_format="numpy"
    ):
        for images, masks in _same_size_groups(batch["image"], batch["mask"]):
            images = images.to(device)
            if features.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                device.type,
                dtype=features.autocast_dtype,
                enabled=features.autocast_dtype is not None,
            ):
                logits = model(images)["out"]
            metric.update(logits.argmax(dim=1), masks.to(device))
    counts = metric.counts().to(device)
    if world_size > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    scores = MeanIoU.from_counts(counts.cpu(), settings.ignore_index).compute()
    metrics = {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy}
    for name, iou in zip(class_names, scores.per_class_iou, strict=True):
        metrics[f"val_iou/{name}"] = iou
    return metrics


def _report_with_checkpoint(
    metrics: dict[str, float],
    rank: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: PolyLR,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    settings: LoopSettings,
) -> None:
    """Report the epoch; rank 0 attaches the checkpoint (the others report metrics only)."""
    # Ray ranks checkpoints by val_miou; an epoch without validation ranks lowest (nan).
    reported = {"val_miou": float("nan"), **metrics}
    name = f"epoch_{progress.epoch:04d}"
    if rank != 0:
        ray.train.report(reported, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory(prefix="apcnet-ckpt-") as folder:
        save_training_state(
            Path(folder),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            progress=progress,
            run=settings.description,
        )
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(reported, checkpoint=checkpoint, checkpoint_dir_name=name)


def _same_size_groups(images: Any, masks: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a numpy batch (stacked, or object arrays of per-row arrays) into tensor groups
    of equal size: images (n, 3, h, w) float32, masks (n, h, w) int64."""
    rows = [
        (np.asarray(image), np.asarray(mask)) for image, mask in zip(images, masks, strict=True)
    ]
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0].shape != rows[start][0].shape:
            group = rows[start:end]
            groups.append(
                (
                    torch.from_numpy(np.stack([image for image, _ in group])),
                    torch.from_numpy(np.stack([mask for _, mask in group]).astype(np.int64)),
                )
            )
            start = end
    return groups


def _build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
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


def _batch_to_device(
    batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) float32, masks (N, H, W) int64) on `device`."""
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, dtype=torch.int64, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def _all_reduce_mean(value: torch.Tensor) -> float:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def _open_tracker(settings: LoopSettings) -> Any:
    from pipeline.tracking.runs import RunTracker

    return RunTracker.open(
        settings.run_name,
        tracking_uri=settings.tracking_uri,
        experiment=settings.experiment_name,
        tags=settings.tracking_tags,
    )


def _tracked(metrics: dict[str, float]) -> dict[str, float]:
    """What goes to MLflow: everything but bookkeeping values, and no nan placeholders."""
    skipped = {"epoch", "first_step_unix_s"}
    return {k: v for k, v in metrics.items() if k not in skipped}


def _epoch_line(metrics: dict[str, float], total_epochs: int) -> str:
    parts = [f"epoch {int(metrics['epoch'])}/{total_epochs}"]
    for key in ("train_loss", "lr", "images_per_s", "epoch_time_s", "val_miou"):
        if key in metrics:
            parts.append(f"{key}={metrics[key]:.4g}")
    if "val_pixel_accuracy" in metrics:
        parts.append(f"val_pixel_accuracy={metrics['val_pixel_accuracy']:.4g}")
    return "  ".join(parts)


def _say(rank: int, message: str) -> None:
    if rank == 0:
        print(message, file=sys.stdout, flush=True)
