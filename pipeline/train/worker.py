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

import contextlib
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import PreemptionInfo
from torch import nn

from pipeline.config.batching import BatchPlan
from pipeline.console.header import placement_line
from pipeline.console.logs import quiet_training_worker
from pipeline.console.progress import ConsoleMode, epoch_bar
from pipeline.data.ingest import AUGMENTATION_EPOCH_COLUMN, TRAIN_DATASET, VAL_DATASET
from pipeline.train import startup
from pipeline.train.device import DeviceFeatures, device_features
from pipeline.train.epoch_logging import (
    ACCUMULATION_KEY,
    AUGMENTATION_DRIFT_KEY,
    GLOBAL_BATCH_KEY,
    NOTICE_KEY,
    RESIZE_LOST_KEY,
    VALIDATED_KEY,
    WORKER_NODES_KEY,
    WORKERS_KEY,
)
from pipeline.train.epoch_meter import EpochMeter, EpochResult
from pipeline.train.group_ledger import GroupRecord, lost_iterations
from pipeline.train.hooks import LoopPosition
from pipeline.train.node_reporter import start_node_reporter, stop_node_reporter
from pipeline.train.run_folder import SCORE_METRIC
from pipeline.train.settings import COMPLETED_STATUS, NONFINITE_STATUS, LoopSettings
from pipeline.train.state import (
    Progress,
    TrainingState,
    build_training_state,
    checkpoint_folder_name,
)
from pipeline.train.step import (
    apply_gradients,
    backward_micro_batch,
    batch_to_device,
    forward_loss,
)
from pipeline.train.validation import validate

# After a preemption notice without a deadline, Ray Train restarts the group about 120 s later
# (its default); a worker that saved its checkpoint waits that long plus a grace.
NO_DEADLINE_WAIT_S = 120.0
RESTART_GRACE_S = 60.0


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's entry point: `train_loop_config={"settings": LoopSettings(...),
    "startup_marks": {...}, "ledger": <GroupLedger actor> or None}`. Returns (rank 0's becomes
    `Result.return_value`) {"status": "completed"} or {"status": "nonfinite_loss", "epoch": e,
    "global_iteration": i}."""
    marks = {**loop_config["startup_marks"], "loop_started": startup.now()}
    settings: LoopSettings = loop_config["settings"]
    quiet_training_worker()
    worker = Worker.current(settings, loop_config.get("ledger"))
    placement = worker.node_of_each_rank()
    reporter = start_node_reporter(settings.node_metrics, placement, worker.rank)
    try:
        return train_epochs(settings, worker, placement, marks)
    finally:
        stop_node_reporter(reporter)


def train_epochs(
    settings: LoopSettings, worker: Worker, placement: list[str], marks: dict[str, Any]
) -> dict[str, Any]:
    """The run's remaining epochs on this worker (`placement`: each rank's node); returns what
    `train_loop_per_worker` does."""
    plan = settings.batch_plan(worker.world_size)
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
    lost = worker.group_started(placement, state.progress, plan, settings.run_name)
    model = ray.train.torch.prepare_model(state.model)
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    marks["model_ready"] = startup.now()

    for epoch in settings.epochs_after(state.progress.epoch):
        micro_batches = train_shard.iter_torch_batches(
            batch_size=plan.micro_batch_size,
            drop_last=True,
            prefetch_batches=settings.config.data.ingest.prefetch_batches,
        )
        result = train_one_epoch(model, state, micro_batches, settings, worker, epoch, plan)
        if (iteration := result.nonfinite_at_iteration) is not None:
            worker.print(f"non-finite loss in epoch {epoch} at iteration {iteration}")
            return {"status": NONFINITE_STATUS, "epoch": epoch, "global_iteration": iteration}
        global_iteration = state.progress.global_iteration + result.iterations
        metrics = result.metrics(epoch, global_iteration, state.learning_rate)
        metrics |= plan_metrics(plan) | {RESIZE_LOST_KEY: lost}
        metrics |= {AUGMENTATION_DRIFT_KEY: result.augmentation_epoch_drift}
        if result.augmentation_epoch_drift:
            worker.print(
                f"warning: epoch {epoch} read rows augmented for another epoch "
                f"(augmentation_epoch_drift={result.augmentation_epoch_drift})"
            )
        lost = 0  # counted once, in the epoch the restart happened
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
    micro_batches: Any,
    settings: LoopSettings,
    worker: Worker,
    epoch: int,
    plan: BatchPlan,
) -> EpochResult:
    """Train over one epoch of this worker's `micro_batches` (each `plan.micro_batch_size`
    images), `plan.accumulation_steps` of them per optimiser step; `model` is `state.model`,
    wrapped in DDP when there are several workers. A state restored from a checkpoint saved on
    a preemption notice resumes the epoch after its `steps_into_epoch` steps: the pass's first
    micro-batches are read and passed over, so the pass still ends (and the next epoch gets the
    next augmentation). Stops early at `settings.total_iterations`; on a preemption notice
    saves a checkpoint and waits for Ray Train's restart (`checkpoint_on_notice`)."""
    config = settings.config
    model.train()
    skipped_steps = state.progress.steps_into_epoch
    bar = epoch_bar(worker.console, epoch, settings.total_epochs, settings.iterations_per_epoch)
    meter = EpochMeter(bar, worker.world_size)
    steps = grouped(meter.timed(micro_batches), plan.accumulation_steps)
    first = state.progress.global_iteration + 1
    drift = 0
    for iteration, step_batches in enumerate(steps, first - skipped_steps):
        if iteration < first:
            continue  # trained before the notice checkpoint this state was restored from
        if iteration > settings.total_iterations:
            break
        at = position(settings, worker, epoch, iteration)
        settings.hooks.before_step(at)
        losses = []
        state.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(step_batches):
            drift = max(drift, augmentation_epoch_drift(batch, epoch))
            images, masks = batch_to_device(
                batch, worker.device, worker.features.channels_last, config.data.augmentation
            )
            # DDP averages gradients across workers on the step's last backward only.
            last = index == plan.accumulation_steps - 1
            with contextlib.nullcontext() if last else no_gradient_sync(model):
                loss = forward_loss(
                    model, images, masks, worker.features, config, settings.metadata.ignore_index
                )
                loss = settings.hooks.loss_computed(at, loss)
                backward_micro_batch(state, loss, plan.accumulation_steps)
            losses.append(loss.detach().float())
        # One all-reduce per step: the logged loss is the global mean, and every worker sees a
        # non-finite loss on any worker, so they all stop at the same step.
        global_loss = all_reduce_mean(torch.stack(losses).mean())
        if not math.isfinite(global_loss):
            return meter.result(nonfinite_at_iteration=iteration, augmentation_epoch_drift=drift)
        apply_gradients(state, config.optimization.grad_clip_norm)
        meter.step_done(global_loss, plan.images_per_worker)
        worker.step_done(epoch, iteration)
        # After the epoch's last step the epoch's own checkpoint comes next anyway.
        steps_into_epoch = iteration - (first - skipped_steps) + 1
        mid_epoch = steps_into_epoch < settings.iterations_per_epoch
        checks = settings.checkpoint_on_notice and mid_epoch
        # A barrier across workers: every one asks after the same steps.
        notice = ray.train.get_preemption_info() if checks else None
        if notice is not None and iteration < settings.total_iterations:
            noticed = state.during_epoch(iteration, steps_into_epoch)
            checkpoint_on_notice(notice, noticed, settings, worker, epoch)
    return meter.result(augmentation_epoch_drift=drift)


def augmentation_epoch_drift(batch: dict[str, torch.Tensor], epoch: int) -> int:
    """How far the rows of `batch` are from data epoch `epoch - 1`, whose augmentation training
    epoch `epoch` must read, also after a restart or a resize of the group (0: all of them are
    of it). Reported per epoch as `augmentation_epoch_drift`, with a warning line when it is
    not 0: a sign that a new group's data did not start at its checkpoint's epoch."""
    drawn_for = batch[AUGMENTATION_EPOCH_COLUMN]
    return int((drawn_for.to(torch.int64) - (epoch - 1)).abs().max())


def grouped(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items; a shorter remainder is read and dropped."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []


def no_gradient_sync(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's `no_sync` for a wrapped model (gradients accumulate locally), else nothing."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def plan_metrics(plan: BatchPlan) -> dict[str, float]:
    """The batch plan an epoch trained with, for MLflow."""
    return {
        WORKERS_KEY: plan.workers,
        ACCUMULATION_KEY: plan.accumulation_steps,
        GLOBAL_BATCH_KEY: plan.global_batch,
    }


def checkpoint_on_notice(
    notice: PreemptionInfo,
    state: TrainingState,
    settings: LoopSettings,
    worker: Worker,
    epoch: int,
) -> NoReturn:
    """A node of the group is being preempted: save the state after this step (rank 0) and
    report it, then wait for Ray Train to restart the group from it, at the notice's deadline
    or as soon as the node goes. Training on would be lost at that restart anyway."""
    iteration = state.progress.global_iteration
    nodes = ", ".join(node[:8] for node in notice.preempted_node_ids)
    deadline = notice.deadline_ms / 1000 if notice.deadline_ms else None
    remaining = f"{max(0.0, deadline - time.time()):.0f} s" if deadline else "no deadline given"
    worker.print(
        f"preemption notice: node {nodes} goes ({remaining}); checkpoint at epoch {epoch} "
        f"step {state.progress.steps_into_epoch}/{settings.iterations_per_epoch} "
        f"(iteration {iteration})"
    )
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "global_iteration": iteration,
        NOTICE_KEY: 1,
    }
    report(metrics, state, settings, worker, None, notice_at_iteration=iteration)
    worker.print("checkpoint saved; waiting for Ray Train to restart the workers from it")
    # Ray Train ends this process when it restarts the group; the bound only keeps a worker
    # from waiting forever should that restart never come.
    waited_s = (deadline - time.time() if deadline else NO_DEADLINE_WAIT_S) + RESTART_GRACE_S
    time.sleep(max(waited_s, RESTART_GRACE_S))
    raise RuntimeError(
        f"node {nodes} was to be preempted, but Ray Train did not restart the workers "
        f"within {RESTART_GRACE_S:.0f} s of the notice's deadline"
    )


@dataclass(frozen=True)
class Worker:
    """This worker's place in the group, its device and device features, what it shows on
    the driver's console ("off" on every rank but 0), and the run's `GroupLedger` (rank 0 only
    writes to it)."""

    rank: int
    world_size: int
    device: torch.device
    features: DeviceFeatures
    console: ConsoleMode
    ledger: Any = None

    @staticmethod
    def current(settings: LoopSettings, ledger: Any = None) -> Worker:
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        features = device_features(settings.config.scaling, device, world_size)
        console = settings.console if rank == 0 else "off"
        return Worker(rank, world_size, device, features, console, ledger if rank == 0 else None)

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

    def group_started(
        self, placement: list[str], progress: Progress, plan: BatchPlan, run_name: str
    ) -> int:
        """Tell the ledger this group started (rank 0), say on the console where it resumes and
        whether it shrank or grew; return the steps the restart lost (0 on other ranks)."""
        if self.ledger is None:
            return 0
        epoch_in_progress = progress.epoch + 1
        previous: GroupRecord | None = ray.get(
            self.ledger.group_started.remote(
                self.world_size, tuple(placement), epoch_in_progress, progress.global_iteration
            )
        )
        lost = lost_iterations(previous, progress.global_iteration)
        where = f"epoch {epoch_in_progress} step {progress.steps_into_epoch}"
        batch = (
            f"{plan.micro_batch_size} images x {plan.accumulation_steps} micro-batches per "
            f"worker, {plan.global_batch} per step"
        )
        if previous is not None:
            change = (
                f"shrinking to {self.world_size} workers (from {previous.workers})"
                if previous.workers > self.world_size
                else f"growing to {self.world_size} workers (from {previous.workers})"
                if previous.workers < self.world_size
                else f"restarting the {self.world_size} workers"
            )
            self.print(
                f"{change}: resuming at {where} (iteration {progress.global_iteration}; "
                f"{lost} iterations since that checkpoint lost); {batch}"
            )
        elif progress.global_iteration > 0:
            into = (
                f", {progress.steps_into_epoch} steps into the next"
                if progress.steps_into_epoch
                else ""
            )
            self.print(f"resuming {run_name} after epoch {progress.epoch}{into}")
        if previous is None and plan.accumulation_steps > 1:
            self.print(f"batch     {batch}")
        return lost

    def step_done(self, epoch: int, global_iteration: int) -> None:
        """Tell the ledger how far the group got (rank 0; not waited for)."""
        if self.ledger is not None:
            self.ledger.step_done.remote(epoch, global_iteration)


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
        augmentation=settings.config.data.augmentation,
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
    notice_at_iteration: int | None = None,
) -> None:
    """`ray.train.report` the epoch (or, with `notice_at_iteration`, the state saved on a
    preemption notice); rank 0 attaches the checkpoint (the others report metrics only) and,
    with `placement` (each rank's node), says where the workers run."""
    # Ray ranks checkpoints by val_miou; an epoch without validation ranks lowest (nan).
    reported: dict[str, Any] = {SCORE_METRIC: float("nan"), **metrics}
    reported[VALIDATED_KEY] = int(SCORE_METRIC in metrics)
    if placement is not None:
        reported[WORKER_NODES_KEY] = ",".join(
            f"{rank}:{node}" for rank, node in enumerate(placement)
        )
    name = checkpoint_folder_name(state.progress.epoch, notice_at_iteration)
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
