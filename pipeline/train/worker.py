"""The per-worker training loop that Ray Train runs on every worker.

One epoch: train on this worker's share of the train split (DDP averages gradients), validate
every `evaluation.every_epochs` epochs on this worker's disjoint share of the val split
(counts summed over workers, so every val sample counts exactly once), log the epoch's metrics
to MLflow from rank 0, then `ray.train.report` the metrics with a checkpoint. A replayed epoch
after a restart is logged again and skipped by the tracker, which ignores steps it already
has, so MLflow holds every epoch exactly once.

A NaN or infinite loss is not a worker failure: all workers agree on it (all-reduce), log
`nonfinite_loss=1` to MLflow and return that status to the driver without a checkpoint, so Ray
does not restart anything and the last good checkpoint stays the latest.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.data.ingest import VAL_DATASET
from pipeline.train import startup
from pipeline.train.batches import TimedBatches, epoch_batches
from pipeline.train.console import epoch_bar, placement_line
from pipeline.train.hooks import LoopPosition
from pipeline.train.model import DeviceFeatures, build_training_state, device_features
from pipeline.train.process_group import TorchProcessGroupConfig, join_process_group
from pipeline.train.settings import COMPLETED_STATUS, NONFINITE_STATUS, LoopSettings
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
    speaks: bool  # the one worker that prints: rank 0, when the run has a console

    @staticmethod
    def current(settings: LoopSettings) -> Worker:
        context = ray.train.get_context()
        world_size = context.get_world_size()
        device = ray.train.torch.get_device()
        features = device_features(settings.config.scaling, device, world_size)
        rank = context.get_world_rank()
        return Worker(rank, world_size, device, features, rank == 0 and settings.console)

    def say(self, message: str) -> None:
        if self.speaks:
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


def run_training(
    settings: LoopSettings,
    marks: dict[str, float],
    train_shard: Any,
    first_batches: Iterable[Any] | None,
) -> dict[str, Any]:
    """The loop of `pipeline.train.entry.train_loop_per_worker`, which has asked for this
    worker's `train_shard` and started the first epoch's `first_batches`; `marks` are the
    start-up's so far.

    Returns (rank 0's value becomes `Result.return_value`) {"status": "completed"} or
    {"status": "nonfinite_loss", "epoch": e, "global_iteration": i}.
    """
    worker = Worker.current(settings)
    join_process_group(TorchProcessGroupConfig.of(settings.config.scaling), worker.device)
    tracker = _open_tracker(settings, worker, _node_of_each_rank(worker))
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
        result = train_one_epoch(
            model,
            state,
            train_shard,
            settings,
            worker,
            epoch,
            batches=first_batches,
            after_first_step=tracker.start_opening if tracker is not None else None,
        )
        first_batches = None
        if result.nonfinite_at_iteration is not None:
            return _stop_on_nonfinite_loss(epoch, result.nonfinite_at_iteration, tracker, worker)
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
        if tracker is not None:
            tracker.log_metrics(_tracked(metrics), step=epoch)
        worker.say(_epoch_line(metrics, settings.total_epochs))
        if (startup_line := startup.startup_line(metrics)) is not None:
            worker.say(startup_line)
        for hook in settings.hooks:
            hook.epoch_logged(_position(settings, worker, epoch, state.progress.global_iteration))
        state = state.after_epoch(epoch, result.iterations, metrics)
        _report_with_checkpoint(metrics, state, settings, worker)
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
    batches: Iterable[Any] | None = None,
    after_first_step: Callable[[], None] | None = None,
) -> EpochResult:
    """Train over this worker's batches of one epoch (`batches`, default the epoch's
    `epoch_batches` of `train_shard`); losses are averaged over workers every step. `model` is
    `state.model`, wrapped in DDP when there are several workers. `after_first_step` is called
    once the epoch's first optimisation step is done."""
    config = settings.config
    features = worker.features
    started = time.perf_counter()
    model.train()
    loss_sum, iterations, images_seen, first_step = 0.0, 0, 0, None
    if batches is None:
        batches = epoch_batches(train_shard, config, worker.world_size)
    batches = TimedBatches(batches)
    bar = epoch_bar(worker.speaks, epoch, settings.total_epochs, settings.iterations_per_epoch)
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
            if after_first_step is not None:
                after_first_step()
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
        # This rank's own wait; the tracker and the console line are rank 0's. A starved other
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


def _stop_on_nonfinite_loss(
    epoch: int, iteration: int, tracker: Any, worker: Worker
) -> dict[str, Any]:
    if tracker is not None:
        tracker.log_metrics({"nonfinite_loss": 1}, step=epoch)
    worker.say(f"non-finite loss in epoch {epoch} at iteration {iteration}")
    return {"status": NONFINITE_STATUS, "epoch": epoch, "global_iteration": iteration}


def _report_with_checkpoint(
    metrics: dict[str, float], state: TrainingState, settings: LoopSettings, worker: Worker
) -> None:
    """Report the epoch; rank 0 attaches the checkpoint (the others report metrics only)."""
    # Ray ranks checkpoints by val_miou; an epoch without validation ranks lowest (nan).
    reported = {"val_miou": float("nan"), **metrics}
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


def _open_tracker(settings: LoopSettings, worker: Worker, nodes: list[str]) -> Any:
    """Rank 0 says where the workers run and gets its MLflow run, to be opened (None elsewhere)."""
    if worker.rank != 0:
        return None
    placement = ",".join(f"{rank}:{node}" for rank, node in enumerate(nodes))
    worker.say(placement_line(nodes))
    if not settings.config.tracking.enabled:
        return None

    def open_run() -> Any:
        from pipeline.tracking.retry import RetryPolicy
        from pipeline.tracking.runs import RunTracker
        from pipeline.tracking.tags import WORKER_NODES_TAG

        return RunTracker.open(
            settings.run_name,
            tracking_uri=settings.tracking_uri,
            experiment=settings.experiment_name,
            tags={**settings.tracking_tags, WORKER_NODES_TAG: placement},
            retry=RetryPolicy(budget_s=settings.config.tracking.outage_wait_s),
        )

    return _OpeningTracker(open_run)


class _OpeningTracker:
    """An MLflow run opened on a background thread once the training has started. Importing
    MLflow and finding the run take rank 0 about 1.5 s of CPU; beside the model build they
    would delay every rank's first step (DDP waits for rank 0), so the loop calls
    `start_opening` after its first optimisation step. The driver opened the same run before
    training, so its address is known to work. `log_metrics` waits for the opening (starting
    it if the loop did not) and raises what it raised."""

    def __init__(self, open_run: Callable[[], Any]) -> None:
        self._open_run = open_run
        self._opened: Future[Any] = Future()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None

    def start_opening(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._open, daemon=True)
                self._thread.start()

    def _open(self) -> None:
        try:
            self._opened.set_result(self._open_run())
        except BaseException as error:  # handed to the thread that logs
            self._opened.set_exception(error)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.start_opening()
        self._opened.result().log_metrics(metrics, step=step)


def _tracked(metrics: dict[str, float]) -> dict[str, float]:
    """What goes to MLflow: everything but bookkeeping values, and no nan placeholders."""
    skipped = {"epoch", "first_step_unix_s"}
    return {k: v for k, v in metrics.items() if k not in skipped and not startup.is_mark(k)}


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
