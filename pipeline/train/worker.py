"""The training loop Ray's TorchTrainer runs on every worker (`train_loop_per_worker`).

Ray has formed torch's process group (gloo on CPU, NCCL on GPU) and chosen the worker's device
before the loop starts. Set-up: the training state (model, optimizer, schedule, loss scaler),
restored from Ray's checkpoint on a restart, the model wrapped by `prepare_model`. Then per
epoch: train on this worker's share of the train split (DDP averages gradients; the loss is
averaged over workers every step), validate every `evaluation.every_epochs` epochs on this
worker's disjoint share of the val split (counts summed over workers, so every val sample
counts once), and `ray.train.report` the metrics with rank 0's checkpoint. Ray Train's
controller logs each registered epoch to MLflow (`pipeline.train.epoch_logging`): the workers
never talk to MLflow.

A NaN or infinite loss is not a worker failure: every worker sees it in the same step (the
all-reduce) and returns that status without a checkpoint, so Ray restarts nothing and the last
good checkpoint stays the latest.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.console.header import placement_line
from pipeline.console.logs import quiet_training_worker
from pipeline.console.progress import ConsoleMode, epoch_bar
from pipeline.data.ingest import TRAIN_DATASET, VAL_DATASET
from pipeline.train import startup
from pipeline.train.device import DeviceFeatures, device_features
from pipeline.train.epoch_logging import VALIDATED_KEY, WORKER_NODES_KEY
from pipeline.train.epoch_meter import EpochMeter, EpochResult
from pipeline.train.hooks import LoopPosition
from pipeline.train.run_folder import SCORE_METRIC
from pipeline.train.settings import COMPLETED_STATUS, NONFINITE_STATUS, LoopSettings
from pipeline.train.state import TrainingState, build_training_state, checkpoint_folder_name
from pipeline.train.step import batch_to_device, forward_loss, optimisation_step
from pipeline.train.validation import validate


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's entry point: `train_loop_config={"settings": LoopSettings(...),
    "startup_marks": {...}}` (the driver's start-up marks). Returns (rank 0's becomes
    `Result.return_value`) {"status": "completed"} or {"status": "nonfinite_loss", "epoch": e,
    "global_iteration": i}."""
    marks = {**loop_config["startup_marks"], "loop_started": startup.now()}
    settings: LoopSettings = loop_config["settings"]
    quiet_training_worker()
    worker = Worker.current(settings)
    placement = worker.node_of_each_rank()
    worker.print(placement_line(placement))
    state = build_training_state(
        settings.config,
        settings.metadata,
        worker.features,
        worker.device,
        rank=worker.rank,
        total_iterations=settings.total_iterations,
    )
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            state = state.restored_from(Path(folder))
        worker.print(f"resuming {settings.run_name} after epoch {state.progress.epoch}")
    model = ray.train.torch.prepare_model(state.model)
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    marks["model_ready"] = startup.now()

    for epoch in settings.epochs_after(state.progress.epoch):
        batches = train_shard.iter_torch_batches(
            batch_size=settings.batch_size_per_worker,
            drop_last=True,
            prefetch_batches=settings.config.data.ingest.prefetch_batches,
        )
        result = train_one_epoch(model, state, batches, settings, worker, epoch)
        if (iteration := result.nonfinite_at_iteration) is not None:
            worker.print(f"non-finite loss in epoch {epoch} at iteration {iteration}")
            return {"status": NONFINITE_STATUS, "epoch": epoch, "global_iteration": iteration}
        global_iteration = state.progress.global_iteration + result.iterations
        metrics = result.metrics(epoch, global_iteration, state.learning_rate)
        first_of_group = marks.get("first_step") is None  # its start-up ends in this epoch
        if first_of_group:
            marks |= {"first_batch": result.first_batch_unix_s}
            marks |= {"first_step": result.first_step_unix_s}
            metrics |= startup.first_epoch_timeline(marks)
        if settings.validates_after(epoch):
            metrics |= validate_on_worker(state.model, settings, worker)
        worker.print(epoch_line(metrics, settings.total_epochs))
        settings.hooks.before_report(position(settings, worker, epoch, global_iteration))
        state = state.after_epoch(epoch, result.iterations, metrics)
        report(metrics, state, settings, worker, placement if first_of_group else None)
        if global_iteration >= settings.total_iterations:
            break
    return {"status": COMPLETED_STATUS}


def train_one_epoch(
    model: nn.Module,
    state: TrainingState,
    batches: Any,
    settings: LoopSettings,
    worker: Worker,
    epoch: int,
) -> EpochResult:
    """Train over one epoch of this worker's `batches`; `model` is `state.model`, wrapped in DDP
    when there are several workers. Stops early at `settings.total_iterations`."""
    config = settings.config
    model.train()
    bar = epoch_bar(worker.console, epoch, settings.total_epochs, settings.iterations_per_epoch)
    meter = EpochMeter(bar, worker.world_size)
    for iteration, batch in enumerate(meter.timed(batches), state.progress.global_iteration + 1):
        if iteration > settings.total_iterations:
            break
        at = position(settings, worker, epoch, iteration)
        settings.hooks.before_step(at)
        images, masks = batch_to_device(
            batch, worker.device, worker.features.channels_last, config.data.augmentation
        )
        loss = forward_loss(
            model, images, masks, worker.features, config, settings.metadata.ignore_index
        )
        loss = settings.hooks.loss_computed(at, loss)
        # One all-reduce per step: the logged loss is the global mean, and every worker sees a
        # non-finite loss on any worker, so they all stop at the same step.
        global_loss = all_reduce_mean(loss.detach().float())
        if not math.isfinite(global_loss):
            return meter.result(nonfinite_at_iteration=iteration)
        optimisation_step(state, loss, config.optimization.grad_clip_norm)
        meter.step_done(global_loss, images.shape[0])
    return meter.result()


@dataclass(frozen=True)
class Worker:
    """This worker's place in the group, its device and device features, and what it shows on
    the driver's console ("off" on every rank but 0)."""

    rank: int
    world_size: int
    device: torch.device
    features: DeviceFeatures
    console: ConsoleMode

    @staticmethod
    def current(settings: LoopSettings) -> Worker:
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        features = device_features(settings.config.scaling, device, world_size)
        console = settings.console if rank == 0 else "off"
        return Worker(rank, world_size, device, features, console)

    def print(self, line: str) -> None:
        """Print `line` on the driver's console (rank 0 of a run with a console only)."""
        if self.console != "off":
            print(line, flush=True)

    def node_of_each_rank(self) -> list[str]:
        """The Ray node id each rank runs on, in rank order (a collective: every rank calls it).
        Nodes on one host share an IP, so Ray's node_rank cannot tell them apart; ids can."""
        node = ray.get_runtime_context().get_node_id()
        if self.world_size == 1:
            return [node]
        nodes: list[Any] = [None] * self.world_size
        dist.all_gather_object(nodes, node)
        return [str(each) for each in nodes]


def validate_on_worker(
    model: nn.Module, settings: LoopSettings, worker: Worker
) -> dict[str, float]:
    """`validate` on this worker's share of the val split. Asked for here, not at set-up:
    asking starts the split's coordinator (a Ray actor process), which would compete with the
    model build and the first batch. Every rank validates after the same epochs, as this call
    (a barrier across workers) requires; Ray caches the shard after that."""
    return validate(
        model,
        ray.train.get_dataset_shard(VAL_DATASET),
        class_names=settings.metadata.class_names,
        ignore_index=settings.metadata.ignore_index,
        batch_size=settings.config.evaluation.batch_size,
        features=worker.features,
        device=worker.device,
        world_size=worker.world_size,
    )


def report(
    metrics: dict[str, float],
    state: TrainingState,
    settings: LoopSettings,
    worker: Worker,
    placement: list[str] | None,
) -> None:
    """`ray.train.report` the epoch; rank 0 attaches the checkpoint (the others report metrics
    only) and, with `placement` (each rank's node), says where the workers run."""
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
        state.save(Path(folder), settings.metadata)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(reported, checkpoint=checkpoint, checkpoint_dir_name=name)


def position(settings: LoopSettings, worker: Worker, epoch: int, iteration: int) -> LoopPosition:
    """Where the loop is, for the hooks."""
    return LoopPosition(
        rank=worker.rank,
        world_size=worker.world_size,
        epoch=epoch,
        iteration=iteration,
        iterations_per_epoch=settings.iterations_per_epoch,
        run_folder=settings.run_folder,
    )


def all_reduce_mean(value: torch.Tensor) -> float:
    """The mean of `value` over all workers."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


# The console's epoch line: (metric, format) in order, each shown when the epoch has it.
EPOCH_LINE = (
    ("train_loss", ".4g"),
    ("lr", ".4g"),
    ("images_per_s", ".4g"),
    ("epoch_time_s", ".4g"),
    ("data_wait_s", ".3g"),
    ("data_wait_fraction", ".2f"),
    ("val_miou", ".4g"),
    ("val_pixel_accuracy", ".4g"),
    (startup.TIME_TO_FIRST_STEP, ".3g"),
)


def epoch_line(metrics: dict[str, float], total_epochs: int) -> str:
    """`epoch 2/3  train_loss=...  ...`: the console's line for one epoch."""
    parts = [f"epoch {int(metrics['epoch'])}/{total_epochs}"]
    parts += [f"{key}={metrics[key]:{spec}}" for key, spec in EPOCH_LINE if key in metrics]
    return "  ".join(parts)
