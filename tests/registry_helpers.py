"""A finished training run without Ray, for the registry and serving tests: its checkpoint
saved by the training state's own save (as a worker saves it after an epoch), its
COMPLETE.json, and its MLflow run ended FINISHED with the tags the driver sets."""

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from test_preview import write_checkpoint
from training_helpers import tiny_config

from pipeline.config.schema import ExperimentConfig
from pipeline.data.shards import manifest_digest
from pipeline.tracking.runs import RunTracker
from pipeline.tracking.tags import MANIFEST_HASH_TAG
from pipeline.train.driver import TrainOutcome
from pipeline.train.run_folder import run_folder, write_complete_marker

BEST_VAL_MIOU = 0.25
JOBS = Path(__file__).resolve().parent.parent / "jobs"


class FinishedRun(NamedTuple):
    config: ExperimentConfig
    run_name: str
    checkpoint: str
    mlflow_run_id: str


def finished_run(root: Path, run_name: str, *, complete: bool = True) -> FinishedRun:
    """A run of `tiny_config(root)` with one checkpoint; without `complete` it has no
    COMPLETE.json and its MLflow run stays RUNNING, as a run cut off mid-way."""
    config = tiny_config(root, experiment="registry-tests")
    manifest_file = str(Path(config.data.path) / "manifest.json")
    checkpoint = write_checkpoint(config, run_name, manifest_file)
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
        outcome = TrainOutcome(
            run_name=run_name,
            status="finished",
            run_folder=run_folder(run_name, config.checkpointing.storage_path),
            best_val_miou=BEST_VAL_MIOU,
            best_checkpoint=checkpoint,
            latest_checkpoint=checkpoint,
            mlflow_run_id=tracker.run_id,
        )
        write_complete_marker(outcome.run_folder, outcome.summary())
    return FinishedRun(config, run_name, checkpoint, tracker.run_id)


def job_main(name: str) -> Callable[[list[str]], int]:
    """The main() of jobs/<name>.py, loaded in this process (the jobs are not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job.main
