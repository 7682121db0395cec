"""The per-worker training loop that Ray Train runs on every worker (`train_loop_per_worker`).

Ray's `TorchTrainer` has formed torch's process group (gloo on CPU, NCCL on GPU) and set the
worker's device before the loop starts. One epoch: train on this worker's share of the train split (DDP averages gradients), validate
every `evaluation.every_epochs` epochs on this worker's disjoint share of the val split
(counts summed over workers, so every val sample counts exactly once), then `ray.train.report`
the metrics with a checkpoint; Ray Train's controller logs each registered epoch to MLflow
(`pipeline.train.epoch_logging`), so the workers never talk to MLflow.

A NaN or infinite loss is not a worker failure: all workers agree on it (all-reduce) and
return that status to the driver without a checkpoint, so Ray does not restart anything and
the last good checkpoint stays the latest.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.data.ingest import TRAIN_DATASET, VAL_DATASET
from pipeline.train import startup
from pipeline.train.batches import TimedBatches, epoch_batches
from pipeline.train.console import epoch_bar, placement_line, quiet_training_worker
from pipeline.train.epoch_logging import VALIDATED_KEY, WORKER_NODES_KEY
from pipeline.train.hooks import LoopPosition
from pipeline.train.model import DeviceFeatures, build_training_state, device_features
from pipeline.train.run_folder import SCORE_METRIC
from pipeline.train.settings import (
    COMPLETED_STATUS,
    NONFINITE_STATUS,
    ConsoleMode,
    LoopSettings,
)
from pipeline.train.state import TrainingState, checkpoint_folder_name
from pipeline.train.step import batch_to_device, forward_loss, optimisation_step
from pipeline.train.validation import validate


@dataclass(frozen=True)
class Worker:
    """This worker's place in the group and the device features it trains with."""

    rank: int
    world_size: int
    device: torch.device
    features: DeviceFeatures
    console: ConsoleMode  # "off" on every worker but rank 0

    @staticmethod
    def current(settings: LoopSettings) -> Worker:
        context = ray.train.get_context()
        world_size = context.get_world_size()
        device = ray.train.torch.get_device()
        features = device_features(settings.config.scaling, device, world_size)
        rank = context.get_world_rank()
        console = settings.console if rank == 0 else "off"
        return Worker(rank, world_size, device, features, console)

    def say(self, message: str) -> None:
        if self.console != "off":
            print(message, file=sys.stdout, flush=True)


@dataclass(frozen=True)
class EpochResult:
    train_loss: float
    images: int
    iterations: int
    seconds: float
    data_wait_s: float
    first_batch_unix_s: float | None
    first_step_unix_s: float | None
    nonfinite_at_iteration: int | None


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's entry point: `train_loop_config={"settings": LoopSettings(...),
    "startup_marks": {...}}` (the driver's start-up marks so far).

    Returns (rank 0's value becomes `Result.return_value`) {"status": "completed"} or
    {"status": "nonfinite_loss", "epoch": e, "global_iteration": i}.
    """
    marks = {**loop_config.get("startup_marks", {}), "loop_started": startup.now()}
    quiet_training_worker()
    settings: LoopSettings = loop_config["settings"]
    worker = Worker.current(settings)
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    placement = _node_of_each_rank(worker)
    worker.say(placement_line(placement))
    state = build_training_state(
        settings.config,
        settings.description,
        worker.features,
        worker.device,
        rank=worker.rank,
        total_iterations=settings.total_iterations,
    )
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            state = state.restored_from(Path(folder))
        worker.say(f"resuming {settings.run_name} after epoch {state.progress.epoch}")
    model = ray.train.torch.prepare_model(state.model) if worker.world_size > 1 else state.model
    first_step_unix_s = float("nan")
    marks["model_ready"] = startup.now()

    for epoch in range(state.progress.epoch + 1, settings.total_epochs + 1):
        result = train_one_epoch(model, state, train_shard, settings, worker, epoch)
        if result.nonfinite_at_iteration is not None:
            return _stop_on_nonfinite_loss(epoch, result.nonfinite_at_iteration, worker)
        timeline: dict[str, float] = {}
        if math.isnan(first_step_unix_s) and result.first_step_unix_s is not None:
            # This attempt's first epoch carries the start-up timeline.
            first_step_unix_s = result.first_step_unix_s
            marks |= {"first_batch": result.first_batch_unix_s, "first_step": first_step_unix_s}
            timeline = startup.mark_metrics(marks)
            timeline |= startup.phase_seconds(timeline)
        metrics = _epoch_metrics(epoch, result, state, first_step_unix_s) | timeline
        if settings.validates_after(epoch):
            metrics |= _validate(state.model, settings, worker)
        worker.say(_epoch_line(metrics, settings.total_epochs))
        if (startup_line := startup.startup_line(metrics)) is not None:
            worker.say(startup_line)
        for hook in settings.hooks:
            hook.before_report(_position(settings, worker, epoch, state.progress.global_iteration))
        state = state.after_epoch(epoch, result.iterations, metrics)
        _report_with_checkpoint(metrics, state, settings, worker, placement if timeline else None)
        if state.progress.global_iteration >= settings.total_iterations:
            break
    return {"status": COMPLETED_STATUS}


def train_one_epoch(
    model: nn.Module,
    state: TrainingState,
    train_shard: Any,
    settings: LoopSettings,
    worker: Worker,
    epoch: int,
) -> EpochResult:
    """Train over this worker's batches of one epoch of `train_shard`; losses are averaged over
    workers every step. `model` is `state.model`, wrapped in DDP when there are several
    workers."""
    config = settings.config
    features = worker.features
    started = time.perf_counter()
    model.train()
    loss_sum, iterations, images_seen, first_step = 0.0, 0, 0, None
    batches = TimedBatches(epoch_batches(train_shard, config, worker.world_size))
    bar = epoch_bar(worker.console, epoch, settings.total_epochs, settings.iterations_per_epoch)
    for batch in batches:
        iteration = state.progress.global_iteration + iterations + 1
        if iteration > settings.total_iterations:
            break
        position = _position(settings, worker, epoch, iteration)
        for hook in settings.hooks:
            hook.before_step(position)
        images, masks = batch_to_device(
            batch, worker.device, features.channels_last, config.data.augmentation
        )
        loss = forward_loss(
            model, images, masks, features, config, settings.description.ignore_index
        )
        for hook in settings.hooks:
            loss = hook.loss_computed(position, loss)
        # One all-reduce per step: the logged loss is the global mean, and every worker sees a
        # non-finite loss on any worker, so they all stop at the same step.
        global_loss = _all_reduce_mean(loss.detach().float())
        if not math.isfinite(global_loss):
            bar.close()
            return EpochResult(
                math.nan, 0, iterations, 0.0, batches.wait_s, None, first_step, iteration
            )
        optimisation_step(state, loss, config.optimization.grad_clip_norm)
        if first_step is None:
            first_step = time.time()
        loss_sum += global_loss
        iterations += 1
        images_seen += images.shape[0]
        bar.update(1)
    bar.close()
    return EpochResult(
        train_loss=loss_sum / max(iterations, 1),
        images=images_seen * worker.world_size,
        iterations=iterations,
        seconds=time.perf_counter() - started,
        data_wait_s=batches.wait_s,
        first_batch_unix_s=batches.first_batch_unix_s,
        first_step_unix_s=first_step,
        nonfinite_at_iteration=None,
    )


def _epoch_metrics(
    epoch: int, result: EpochResult, state: TrainingState, first_step_unix_s: float
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "global_iteration": state.progress.global_iteration + result.iterations,
        "train_loss": result.train_loss,
        "lr": state.optimizer.param_groups[0]["lr"],
        "images_per_s": result.images / result.seconds,
        "epoch_time_s": result.seconds,
        # This rank's own wait; MLflow and the console line get rank 0's. A starved other
        # rank shows up here only as slower steps (rank 0 waits in the all-reduce instead).
        "data_wait_s": result.data_wait_s,
        "data_wait_fraction": result.data_wait_s / result.seconds,
        "first_step_unix_s": first_step_unix_s,
    }


def _validate(model: nn.Module, settings: LoopSettings, worker: Worker) -> dict[str, float]:
    # The val shard is asked for at the first validation, not at start-up: asking starts its
    # split coordinator (a Ray actor process, about 2 s of CPU) that would otherwise compete
    # with the model build and the first batch. Every rank validates after the same epochs,
    # as this call (a barrier across workers) requires; Ray caches the shard after that.
    return validate(
        model,
        ray.train.get_dataset_shard(VAL_DATASET),
        class_names=settings.description.class_names,
        ignore_index=settings.description.ignore_index,
        batch_size=settings.config.evaluation.batch_size,
        features=worker.features,
        device=worker.device,
        world_size=worker.world_size,
    )


def _stop_on_nonfinite_loss(epoch: int, iteration: int, worker: Worker) -> dict[str, Any]:
    worker.say(f"non-finite loss in epoch {epoch} at iteration {iteration}")
    return {"status": NONFINITE_STATUS, "epoch": epoch, "global_iteration": iteration}


def _report_with_checkpoint(
    metrics: dict[str, float],
    state: TrainingState,
    settings: LoopSettings,
    worker: Worker,
    placement: list[str] | None,
) -> None:
    """Report the epoch; rank 0 attaches the checkpoint (the others report metrics only) and,
    with `placement` (each rank's node), says where the workers run."""
    # Ray ranks checkpoints by val_miou; an epoch without validation ranks lowest (nan).
    reported: dict[str, Any] = {SCORE_METRIC: float("nan"), **metrics}
    reported[VALIDATED_KEY] = int(SCORE_METRIC in metrics)
    if placement is not None:
        reported[WORKER_NODES_KEY] = ",".join(
            f"{rank}:{node}" for rank, node in enumerate(placement)
        )
    name = checkpoint_folder_name(state.progress.epoch)
    if worker.rank != 0:
        ray.train.report(reported, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory(prefix="apcnet-ckpt-") as folder:
        state.save(Path(folder), settings.description)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(reported, checkpoint=checkpoint, checkpoint_dir_name=name)


def _position(settings: LoopSettings, worker: Worker, epoch: int, iteration: int) -> LoopPosition:
    return LoopPosition(
        rank=worker.rank,
        world_size=worker.world_size,
        epoch=epoch,
        iteration=iteration,
        iterations_per_epoch=settings.iterations_per_epoch,
        run_folder=settings.run_folder,
    )


def _all_reduce_mean(value: torch.Tensor) -> float:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def _node_of_each_rank(worker: Worker) -> list[str]:
    """The Ray node id each rank runs on, in rank order (a collective: every rank calls it).

    Nodes on one host share an IP, so Ray's node_rank cannot tell them apart; node ids can."""
    node = ray.get_runtime_context().get_node_id()
    if worker.world_size == 1:
        return [node]
    nodes: list[Any] = [None] * worker.world_size
    dist.all_gather_object(nodes, node)
    return [str(each) for each in nodes]


# The console's epoch line: (metric, format) in order, each shown when the epoch has it.
_EPOCH_LINE = (
    ("train_loss", ".4g"),
    ("lr", ".4g"),
    ("images_per_s", ".4g"),
    ("epoch_time_s", ".4g"),
    ("data_wait_s", ".3g"),
    ("data_wait_fraction", ".2f"),
    ("val_miou", ".4g"),
    ("val_pixel_accuracy", ".4g"),
)


def _epoch_line(metrics: dict[str, float], total_epochs: int) -> str:
    parts = [f"epoch {int(metrics['epoch'])}/{total_epochs}"]
    for key, spec in _EPOCH_LINE:
        if key in metrics:
            parts.append(f"{key}={metrics[key]:{spec}}")
    return "  ".join(parts)
