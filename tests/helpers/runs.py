"""Training runs for tests: the tiny training setup, a finished run (trained by Ray, or written
without it as a worker and the driver would leave it), and what MLflow logged for a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.data.shards import load_manifest, manifest_digest
from pipeline.tracking.runs import RunTracker, find_run
from pipeline.tracking.tags import MANIFEST_HASH_TAG
from pipeline.train.device import device_features
from pipeline.train.driver import TrainOutcome
from pipeline.train.run_folder import run_folder, write_complete_marker
from pipeline.train.settings import CheckpointMetadata
from pipeline.train.state import build_training_state, checkpoint_folder_name

from .datasets import tiny_synthetic_set

# The val_miou that a run written without Ray logs at epoch 1 and records as its best.
BEST_VAL_MIOU = 0.25


def tiny_config(root: Path, *overrides: str, experiment: str = "tests") -> ExperimentConfig:
    """resnet18 with a narrow head, 32 px crops, 8 train / 4 val images, 2 epochs, 2 workers;
    iterations_per_epoch = (8 // 2 workers) // 2 per worker = 2. Data in <root>/data (written
    unless there), runs in <root>/runs, MLflow in <root>/mlflow.db."""
    data = tiny_synthetic_set(root / "data")
    return load_config(
        None,
        [
            f"data.path={data}",
            "data.augmentation.crop_size=[32, 32]",
            "data.augmentation.scale_range=[1.0, 1.0]",
            "model.backbone=resnet18",
            "model.channels=64",
            "model.pool_scales=[1, 2]",
            "optimization.batch_size=4",
            "optimization.epochs=2",
            "scaling.num_workers=2",
            "scaling.process_group_timeout_s=60",
            f"checkpointing.storage_path={root / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.experiment_name={experiment}",
            *overrides,
        ],
    )


@dataclass(frozen=True)
class FinishedRun:
    """A training run that ended: the config it ran with and what training returned."""

    config: ExperimentConfig
    outcome: TrainOutcome

    @property
    def run_name(self) -> str:
        return self.outcome.run_name

    @property
    def checkpoint(self) -> str:
        """The run's best checkpoint file."""
        return self.outcome.best_checkpoint

    @property
    def mlflow_run_id(self) -> str | None:
        return self.outcome.mlflow_run_id

    @property
    def root(self) -> Path:
        """The folder of a `tiny_config` run: <root>/runs holds its run folder."""
        return Path(self.config.checkpointing.storage_path).parent


def write_checkpoint(config: ExperimentConfig, run_name: str, manifest_file: str) -> str:
    """`<run folder>/epoch_0001/checkpoint.pt`, saved the way a training worker saves it."""
    manifest = load_manifest(manifest_file, verify=False)
    description = CheckpointMetadata.of_run(run_name, config, manifest, manifest_file)
    device = torch.device("cpu")
    state = build_training_state(
        config,
        description,
        device_features(config.scaling, device, world_size=1),
        device,
        rank=0,
        total_iterations=1,
    )
    folder = Path(run_folder(run_name, config.checkpointing.storage_path))
    return str(state.save(folder / checkpoint_folder_name(1), description))


def run_without_ray(
    config: ExperimentConfig,
    run_name: str,
    *,
    manifest_file: str | None = None,
    tracked: bool = True,
    complete: bool = True,
) -> FinishedRun:
    """A run of `config` with one checkpoint (`write_checkpoint`), on the data set of
    `manifest_file` (default: config.data.path's), as the driver leaves a finished run.

    With `tracked`, its MLflow run carries the data set's hash tag and val_miou BEST_VAL_MIOU
    at step 1. Without `complete` the run looks cut off mid-way: no COMPLETE.json, and its
    MLflow run stays RUNNING (the returned outcome says what a finished run would record).
    """
    manifest_file = manifest_file or str(Path(config.data.path) / "manifest.json")
    checkpoint = write_checkpoint(config, run_name, manifest_file)
    run_id = None
    if tracked:
        tracking = config.tracking
        tracker = RunTracker.open(
            run_name,
            tracking_uri=tracking.tracking_uri,
            experiment=tracking.experiment_name,
            tags={MANIFEST_HASH_TAG: manifest_digest(manifest_file)},
        )
        tracker.log_metrics({"val_miou": BEST_VAL_MIOU}, step=1)
        if complete:
            tracker.set_terminated("FINISHED")
        run_id = tracker.run_id
    outcome = TrainOutcome(
        run_name=run_name,
        status="finished",
        run_folder=run_folder(run_name, config.checkpointing.storage_path),
        best_val_miou=BEST_VAL_MIOU,
        best_checkpoint=checkpoint,
        latest_checkpoint=checkpoint,
        mlflow_run_id=run_id,
    )
    if complete:
        write_complete_marker(outcome.run_folder, outcome.summary())
    return FinishedRun(config, outcome)


def mlflow_run_id(config: ExperimentConfig, run_name: str) -> str:
    """The id of the MLflow run named `run_name` in `config`'s experiment; it must exist."""
    run = find_run(
        run_name,
        tracking_uri=config.tracking.tracking_uri,
        experiment=config.tracking.experiment_name,
    )
    assert run is not None, f"no MLflow run named {run_name}"
    return run.info.run_id


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    """The steps at which `key` was logged to the MLflow run `run_id`, sorted."""
    history = mlflow.MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key)
    return sorted(metric.step for metric in history)
