"""The training driver: what a run's name means, Ray's TorchTrainer, and the run's outcome.

`train_or_resume` is the training job's: a run whose folder is marked complete is reported
and left alone; an existing run with another config is refused; any other existing run
resumes from its latest checkpoint (Ray restores a run from the same RunConfig name and
storage path); a new name starts from scratch. `fit` trains one named run (start or resume)
and is also what a Ray Tune trial calls.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import ray
from ray.train import CheckpointConfig, ControllerError, RunConfig, ScalingConfig, UserCallback

from pipeline.config.schema import (
    ConfigError,
    ExperimentConfig,
    ScalingSection,
    changed_keys,
    config_to_yaml,
    flatten_config,
)
from pipeline.console.header import RunStart
from pipeline.console.logs import train_logging_config
from pipeline.console.progress import ConsoleMode
from pipeline.data.ingest import data_config, training_datasets
from pipeline.data.majority_baseline import class_pixel_counts, majority_class_miou
from pipeline.data.shards import Manifest, manifest_digest
from pipeline.data.training_data import TrainingData, load_training_data
from pipeline.errors import UserError
from pipeline.tracking.node_metrics import NodeMetricsTarget
from pipeline.tracking.tags import DATA_MANIFEST_TAG, MANIFEST_HASH_TAG, RUN_OUTCOME_TAG
from pipeline.train import startup
from pipeline.train.cluster_watch import ClusterWatch, StopReason
from pipeline.train.connection import connect
from pipeline.train.epoch_logging import EpochsToMlflow, log_checkpoint_history
from pipeline.train.failures import (
    WORKER_GROUP_START_TIMEOUT_ENV,
    NonFiniteLossError,
    WorkersNotPlacedError,
    failure_config,
    restart_not_started,
    too_few_nodes,
    workers_not_placed,
)
from pipeline.train.group_ledger import CheckpointsToLedger, start_ledger
from pipeline.train.hooks import TrainingHook, TrainingHooks, hooks_from_environment
from pipeline.train.run_folder import (
    SCORE_METRIC,
    best_checkpoint,
    completed_summary,
    is_reported_number,
    latest_checkpoint,
    latest_progress,
    run_folder,
    storage_root,
    stored_config,
    write_complete_marker,
    write_config_once,
)
from pipeline.train.settings import NONFINITE_STATUS, CheckpointMetadata, LoopSettings
from pipeline.train.state import read_progress


@dataclass(frozen=True)
class RunRequest:
    """A run to fit: its config and name, its data set (loaded and verified), where its folder
    lives, and test-only hooks for every worker's loop (`pipeline.train.hooks`)."""

    config: ExperimentConfig
    run_name: str
    data: TrainingData
    storage: str
    hooks: tuple[TrainingHook, ...] = ()


@dataclass(frozen=True)
class RunReporting:
    """How a run shows itself. `console`: rank 0's progress (`default_console_mode()` for a
    job; "off" in a Tune trial, which prints its own lines). `on_start` receives the run's
    header before its workers start. `callbacks` run in Ray Train's controller (a Tune
    trial's report callback). `mlflow_parent_run_id` nests the MLflow run (a search's).
    `cluster_events` receives the driver's lines about the cluster (a node lost, waiting for
    nodes) when `console` is "off": a search prints them with the trial's name."""

    console: ConsoleMode
    on_start: Callable[[RunStart], None] | None = None
    callbacks: tuple[UserCallback, ...] = ()
    mlflow_parent_run_id: str | None = None
    cluster_events: Callable[[str], None] | None = None


def default_console_mode() -> ConsoleMode:
    """A live bar when this process's stdout is a terminal, else plain lines (a file or pipe:
    CI, `ray job logs`), which a redrawn bar would fill with every redraw."""
    return "bar" if sys.stdout.isatty() else "lines"


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run produced. `history` holds each reported epoch's metrics in order."""

    run_name: str
    status: Literal["finished", "already_complete"]
    run_folder: str
    best_val_miou: float | None
    best_checkpoint: str | None
    latest_checkpoint: str | None
    history: tuple[dict[str, float], ...] = ()
    mlflow_run_id: str | None = None
    majority_baseline_miou: float | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What COMPLETE.json records (and `train` reads back for a complete run)."""
        keys = ("run_name", "best_val_miou", "best_checkpoint", "latest_checkpoint")
        fields = {key: getattr(self, key) for key in keys}
        return fields | {
            "mlflow_run_id": self.mlflow_run_id,
            "majority_baseline_miou": self.majority_baseline_miou,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
        }


def train_or_resume(
    config: ExperimentConfig,
    run_name: str,
    *,
    hooks: Sequence[TrainingHook] = (),
    on_start: Callable[[RunStart], None] | None = None,
) -> TrainOutcome:
    """Train `run_name` to completion: start it, resume it, or report that it is complete.

    `on_start` receives what the run is about to do, before its workers start. Raises
    ConfigError when an existing run is named with a different config.
    """
    storage = storage_root(config)
    summary = completed_summary(run_name, storage)
    if summary is not None:
        return TrainOutcome(
            run_name=run_name,
            status="already_complete",
            run_folder=run_folder(run_name, storage),
            best_val_miou=summary.get("best_val_miou"),
            best_checkpoint=summary.get("best_checkpoint"),
            latest_checkpoint=summary.get("latest_checkpoint"),
            mlflow_run_id=summary.get("mlflow_run_id"),
            majority_baseline_miou=summary.get("majority_baseline_miou"),
        )
    previous = stored_config(run_name, storage)
    if previous is not None and previous != config:
        changed = changed_keys(previous, config)
        raise ConfigError(
            f"run {run_name!r} in {run_folder(run_name, storage)} was started with a different "
            f"config (changed: {', '.join(changed)}); resume it without --config/--set, or "
            "choose a new --name for the new config"
        )
    request = RunRequest(config, run_name, load_training_data(config.data), storage, tuple(hooks))
    return fit(request, RunReporting(default_console_mode(), on_start))


def fit(request: RunRequest, reporting: RunReporting) -> TrainOutcome:
    """Fit one named run with Ray's TorchTrainer and record it in MLflow; resume it if its
    folder holds a checkpoint. The hooks named by `APCNET_TRAINING_HOOKS` run before the
    request's own.

    Raises NonFiniteLossError when the loss became NaN/inf (no restart; the last good
    checkpoint is kept), WorkersNotPlacedError when a lost node's workers found no room in
    `scaling.node_wait_s`, ray.train.TrainingFailedError when workers failed more than
    `scaling.max_failures` times.
    """
    marks = {"driver_process": startup.process_start_unix_s()}
    connect()
    marks["ray_connected"] = startup.now()
    config, run_name, data = request.config, request.run_name, request.data
    folder = run_folder(run_name, request.storage)
    hooks = TrainingHooks((*hooks_from_environment(), *request.hooks))
    settings = _loop_settings(request, folder, hooks, reporting.console)
    write_config_once(folder, config_to_yaml(config))
    resumed = latest_progress(run_name, request.storage)
    resumed_after = resumed.epoch if resumed is not None else 0
    if reporting.on_start is not None:
        reporting.on_start(_run_start(request, settings, resumed_after))
    # Before the MLflow run opens, so that a shard Ray Data cannot plan leaves no run behind.
    datasets = training_datasets(config.data, data.manifest, resumed_after)
    tracker = None
    callbacks = list(reporting.callbacks)
    if config.tracking.enabled:
        tracker = _open_driver_tracker(request, settings, reporting.mlflow_parent_run_id)
        if resumed is not None:
            log_checkpoint_history(tracker, resumed.history)
        # First: a Tune scheduler that stops the trial on this epoch finds it in MLflow.
        uri = _tracking_target(config)[0]
        callbacks.insert(0, EpochsToMlflow(tracker.run_id, uri, config.tracking.outage_wait_s))
        if config.tracking.node_metrics:
            interval = config.tracking.node_metrics_interval_s
            target = NodeMetricsTarget(tracker.run_id, uri, interval, tracker.started_unix_s)
            settings = replace(settings, node_metrics=target)
    # Imported here: they bring torch, which a job needs only once training starts.
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.train.worker import train_loop_per_worker

    # How long a worker group may wait for room after a node is lost (pipeline.train.failures).
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = str(config.scaling.node_wait_s)
    ledger = start_ledger(resumed_after)
    callbacks.append(CheckpointsToLedger(ledger))
    marks["fit_called"] = startup.now()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings, "startup_marks": marks, "ledger": ledger},
        # Ray forms torch's process group: gloo on CPU workers, NCCL on GPU workers.
        torch_config=TorchConfig(timeout_s=config.scaling.process_group_timeout_s),
        scaling_config=ScalingConfig(
            # An int, or (min, max) for an elastic group.
            num_workers=config.scaling.num_workers,
            elastic_resize_monitor_interval_s=config.scaling.resize_check_s,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker=dict(config.scaling.resources_per_worker),
        ),
        run_config=RunConfig(
            name=run_name,
            # A local path or a URI; Ray builds the same filesystem from it as pipeline.storage.
            storage_path=request.storage,
            failure_config=failure_config(config.scaling),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.checkpointing.num_to_keep,
                checkpoint_score_attribute=SCORE_METRIC,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks,
            logging_config=train_logging_config(),
        ),
        datasets=datasets,
        # A restarted group's training data start at its checkpoint's epoch (the ledger's).
        dataset_config=data_config(ingest=config.data.ingest, resume_epochs=ledger),
    )
    console = print if reporting.console != "off" else reporting.cluster_events
    watch = ClusterWatch(ledger, config.scaling, settings.iterations_per_epoch, console)
    try:
        with watch:
            result = trainer.fit()
        if watch.stop_reason is not None:
            raise _stopped_by_watch(watch.stop_reason, run_name, config.scaling)
    except BaseException as error:
        if tracker is not None:
            # A Tune trial that reached its last epoch is torn down by Tune; its callback
            # on the driver may already have ended the run with the trial's real status.
            tracker.set_terminated("FAILED", only_if_running=True)
        if watch.stop_reason is not None:
            raise _stopped_by_watch(watch.stop_reason, run_name, config.scaling) from None
        explained = workers_not_placed(error, run_name, config.scaling)
        if explained is not None:
            raise explained from error
        if isinstance(error, ControllerError) and isinstance(error.controller_failure, UserError):
            raise error.controller_failure from error  # e.g. MLflow unreachable for too long
        raise
    finally:
        ray.kill(ledger)
    returned = result.return_value or {}
    if returned.get("status") == NONFINITE_STATUS:
        if tracker is not None:
            tracker.log_metrics({"nonfinite_loss": 1}, step=returned["epoch"])
            tracker.set_tags({RUN_OUTCOME_TAG: NONFINITE_STATUS})
            tracker.set_terminated("FAILED")
        latest = _or_none(latest_checkpoint, run_name, request.storage)
        raise NonFiniteLossError(
            f"run {run_name!r}: the training loss became NaN or infinite in epoch "
            f"{returned['epoch']} at global iteration {returned['global_iteration']}; "
            f"training stopped without a restart. Last good checkpoint: {latest or 'none'}. "
            "Lower optimization.lr, set optimization.grad_clip_norm, or check the data."
        )
    best = _or_none(best_checkpoint, run_name, request.storage)
    latest = _or_none(latest_checkpoint, run_name, request.storage)
    best_metrics = _best_metrics(result)
    final = dict(result.metrics or {})
    outcome = TrainOutcome(
        run_name=run_name,
        status="finished",
        run_folder=folder,
        best_val_miou=best_metrics.get(SCORE_METRIC),
        best_checkpoint=best,
        latest_checkpoint=latest,
        history=read_progress(latest).history if latest is not None else (),
        mlflow_run_id=tracker.run_id if tracker is not None else None,
        majority_baseline_miou=majority_class_miou(
            class_pixel_counts(data.manifest, config.data.val_split)
        ),
        final_metrics={k: v for k, v in final.items() if isinstance(v, int | float)},
    )
    if tracker is not None:
        _log_final_artifacts(tracker, outcome, best_metrics, data.manifest)
        tracker.set_terminated("FINISHED")
    write_complete_marker(outcome.run_folder, outcome.summary())
    return outcome


def _stopped_by_watch(
    reason: StopReason, run_name: str, scaling: ScalingSection
) -> WorkersNotPlacedError:
    if reason is StopReason.NO_RESTART:
        return restart_not_started(run_name, scaling)
    return too_few_nodes(run_name, scaling)


def _loop_settings(
    request: RunRequest, folder: str, hooks: TrainingHooks, console_mode: ConsoleMode
) -> LoopSettings:
    """What every worker needs; ConfigError when the data set cannot feed the config."""
    config, data = request.config, request.data
    manifest, data_path = data.manifest, data.path
    for key, split in (
        ("train_split", config.data.train_split),
        ("val_split", config.data.val_split),
    ):
        if split not in manifest.splits:
            raise ConfigError(
                f"data set {data_path} has no split {split!r} (data.{key}); "
                f"it has: {', '.join(sorted(manifest.splits))}"
            )
    # Every worker count W of the group divides the global batch B, and each worker streams
    # rows // W rows an epoch in steps of B / W: rows // B steps whatever W is.
    global_batch = config.optimization.batch_size
    train_rows = manifest.splits[config.data.train_split].rows
    iterations_per_epoch = train_rows // global_batch
    if iterations_per_epoch < 1:
        raise ConfigError(
            f"data set {data_path} split {config.data.train_split!r} has {train_rows} samples: "
            f"too few for one step of optimization.batch_size={global_batch}; lower the batch "
            "size or add data"
        )
    optimization = config.optimization
    if optimization.iterations is not None:
        total_iterations = optimization.iterations
        total_epochs = math.ceil(total_iterations / iterations_per_epoch)
    else:
        assert optimization.epochs is not None
        total_epochs = optimization.epochs
        total_iterations = total_epochs * iterations_per_epoch
    metadata = CheckpointMetadata.of_run(request.run_name, config, manifest, data.manifest_file)
    return LoopSettings(
        config=config,
        run_name=request.run_name,
        run_folder=str(folder),
        metadata=metadata,
        iterations_per_epoch=iterations_per_epoch,
        total_epochs=total_epochs,
        total_iterations=total_iterations,
        hooks=hooks,
        console=console_mode,
    )


def _run_start(request: RunRequest, settings: LoopSettings, resumed_after: int) -> RunStart:
    """The job's header for the run `settings` describes."""
    config, data = request.config, request.data
    scales = ",".join(map(str, config.model.pool_scales)) or "none (dilated FCN)"
    splits = (config.data.train_split, config.data.val_split)
    tracking_uri, experiment = _tracking_target(config) if config.tracking.enabled else (None, None)
    return RunStart(
        run_name=settings.run_name,
        run_folder=settings.run_folder,
        resumed_after_epoch=resumed_after,
        data_path=data.path,
        dataset=data.manifest.dataset,
        split_rows={split: data.manifest.splits[split].rows for split in splits},
        num_classes=len(data.manifest.class_names),
        model=f"APCNet {config.model.backbone}, pool scales {scales}",
        epochs=settings.total_epochs,
        iterations_per_epoch=settings.iterations_per_epoch,
        global_batch_size=config.optimization.batch_size,
        num_workers=(
            f"{config.scaling.min_workers} to {config.scaling.max_workers} (elastic)"
            if config.scaling.elastic
            else str(config.scaling.num_workers)
        ),
        resources_per_worker=dict(config.scaling.resources_per_worker),
        use_gpu=config.scaling.use_gpu,
        tracking_uri=tracking_uri,
        experiment=experiment,
    )


def _tracking_target(config: ExperimentConfig) -> tuple[str, str]:
    """The resolved tracking URI and experiment of `config` (tracking on: resolving imports
    MLflow, which a run with tracking off never does)."""
    from pipeline.tracking.runs import resolve_tracking

    return resolve_tracking(config.tracking.tracking_uri, config.tracking.experiment_name)


def _open_driver_tracker(
    request: RunRequest, settings: LoopSettings, parent_run_id: str | None
) -> Any:
    """Open (or reopen) the run's MLflow run; log parameters, tags, the resolved config and
    the data set's train and val splits as dataset inputs."""
    from pipeline.tracking.conventions import TRAINING_CONTEXT, VALIDATION_CONTEXT, split_inputs
    from pipeline.tracking.retry import RetryPolicy
    from pipeline.tracking.runs import RunTracker

    config, manifest = request.config, request.data.manifest
    manifest_path = settings.metadata.manifest_path
    digest = manifest_digest(manifest_path)
    tracking_uri, experiment = _tracking_target(config)
    tracker = RunTracker.open(
        request.run_name,
        tracking_uri=tracking_uri,
        experiment=experiment,
        tags={MANIFEST_HASH_TAG: digest, DATA_MANIFEST_TAG: manifest_path},
        parent_run_id=parent_run_id,
        retry=RetryPolicy(budget_s=config.tracking.outage_wait_s),
    )
    tracker.log_params(flatten_config(config))
    tracker.log_text(config_to_yaml(config), "config.yaml")
    contexts = {
        config.data.train_split: TRAINING_CONTEXT,
        config.data.val_split: VALIDATION_CONTEXT,
    }
    rows = {split: manifest.splits[split].rows for split in contexts}
    tracker.log_inputs(split_inputs(manifest.dataset, rows, contexts, digest, manifest_path))
    return tracker


def _log_final_artifacts(
    tracker: Any, outcome: TrainOutcome, best_metrics: dict[str, Any], manifest: Manifest
) -> None:
    rows = [
        (name, float(best_metrics.get(f"val_iou/{name}", float("nan"))))
        for name in manifest.class_names
    ]
    tracker.log_table(rows, ["class", "iou"], "per_class_iou.csv")
    tracker.log_table(rows, ["class", "iou"], "per_class_iou.md")
    reference = {
        "best_checkpoint": outcome.best_checkpoint,
        "latest_checkpoint": outcome.latest_checkpoint,
        "best_val_miou": outcome.best_val_miou,
        "epoch": best_metrics.get("epoch"),
    }
    tracker.log_dict(reference, "best_checkpoint.json")


def _best_metrics(result: Any) -> dict[str, Any]:
    scored = [
        metrics
        for _, metrics in (result.best_checkpoints or [])
        if is_reported_number(metrics.get(SCORE_METRIC))
    ]
    return max(scored, key=lambda metrics: metrics[SCORE_METRIC]) if scored else {}


def _or_none(lookup: Any, run_name: str, storage: str) -> str | None:
    try:
        return lookup(run_name, storage)
    except FileNotFoundError:
        return None
