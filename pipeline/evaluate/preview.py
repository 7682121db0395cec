"""The picture a training run ends with: a few validation images, their ground truth and the
trained model's prediction, side by side.

`write_training_preview` runs in the job's own process once training has finished, without
Ray (a handful of small images on the CPU), and draws exactly what an evaluation's sample grid
shows (`evaluation.prediction_grid`): the run's best checkpoint (its latest when none was
scored), the first samples of the validation split read straight from its shards, whole-image
prediction at each image's own size, titled columns and a legend of the palette's classes.
"""

from __future__ import annotations

from PIL import Image

from pipeline import storage
from pipeline.config.schema import ExperimentConfig
from pipeline.data.shards import load_manifest
from pipeline.evaluate.evaluation import prediction_grid
from pipeline.evaluate.inference_model import (
    InferenceError,
    check_classes_match,
    load_project_checkpoint,
)
from pipeline.evaluate.prediction import write_png_atomically
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.train.driver import TrainOutcome
from pipeline.train.run_folder import PREVIEW_FILE

DEFAULT_PREVIEW_SAMPLES = 4


def write_training_preview(
    outcome: TrainOutcome, config: ExperimentConfig, num_samples: int = DEFAULT_PREVIEW_SAMPLES
) -> str | None:
    """Draw the trained run `outcome` (trained with `config`) on the first `num_samples`
    images of its validation split (`config.data.val_split`); returns where the picture is,
    `<run folder>/preview.png` (a local path or an s3:// / gs:// URI).

    The PNG is written whole through `pipeline.storage`; when the run is tracked
    (`outcome.mlflow_run_id`), it is also logged to that MLflow run (on
    `config.tracking.tracking_uri`) as the artifact `preview.png`, leaving the run's status
    as training left it. Returns None and writes nothing when there is nothing to draw: no
    checkpoint, or no validation image.

    Raises InferenceError / DatasetError when the checkpoint or its data set cannot be read,
    and the tracking store's errors when the artifact cannot be logged.
    """
    checkpoint = outcome.best_checkpoint or outcome.latest_checkpoint
    if checkpoint is None or num_samples < 1:
        return None
    inference = load_project_checkpoint(checkpoint)
    if inference.manifest is None:
        raise InferenceError(f"{inference.source} does not record its training data set")
    # Training has just verified every shard; hashing them again would cost more than the
    # picture (minutes for a large set), and a damaged shard still fails to read.
    manifest = load_manifest(inference.manifest, verify=False)
    split = config.data.val_split
    if split not in manifest.splits or manifest.splits[split].rows == 0:
        return None
    check_classes_match(inference, manifest.class_names, manifest.root or manifest.dataset)
    grid = prediction_grid(inference, manifest, split, TestTimeOptions(), num_samples)
    location = storage.join(outcome.run_folder, PREVIEW_FILE)
    write_png_atomically(Image.fromarray(grid), location)
    if outcome.mlflow_run_id is not None:
        from pipeline.tracking.runs import RunTracker  # MLflow's import: only when tracked

        tracker = RunTracker.attach(
            outcome.mlflow_run_id, tracking_uri=config.tracking.tracking_uri
        )
        # The file itself when the run folder is local, else a temporary copy of the same name.
        with storage.local_file(location) as local_path:
            tracker.log_artifact(local_path)
    return location
