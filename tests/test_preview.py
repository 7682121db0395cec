"""The picture a training run ends with: its first validation images, their ground truth and
the prediction, in the run folder and in its MLflow run (no Ray: the checkpoint is written by
the training state's own save, as a worker writes it after an epoch)."""

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers.datasets import tiny_synthetic_set
from helpers.runs import FinishedRun, run_without_ray, tiny_config
from PIL import Image

from jobs.train import print_picture
from pipeline.config.schema import ExperimentConfig
from pipeline.data.shard_writer import write_manifest
from pipeline.data.shards import SplitInfo, load_manifest
from pipeline.evaluate.evaluation import prediction_grid
from pipeline.evaluate.inference_model import load_project_checkpoint
from pipeline.evaluate.pictures import COLUMN_TITLES
from pipeline.evaluate.preview import DEFAULT_PREVIEW_SAMPLES, write_training_preview
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.train.run_folder import PREVIEW_FILE

NUM_VAL = 6  # more than the picture shows: it takes the first DEFAULT_PREVIEW_SAMPLES
TILE_HEIGHT = 160  # sample_grid's defaults: 32 px images become 160 px square tiles
GAP = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preview")
    tiny_synthetic_set(root / "data", num_val=NUM_VAL)
    return root


@pytest.fixture(scope="module")
def config(root) -> ExperimentConfig:
    return tiny_config(root, experiment="preview-tests")


@pytest.fixture(scope="module")
def tracked(config) -> FinishedRun:
    return run_without_ray(config, "tracked")


@pytest.fixture(scope="module")
def tracked_picture(tracked) -> str:
    return write_training_preview(tracked.outcome, tracked.config)


def test_the_picture_is_written_into_the_run_folder(tracked, tracked_picture):
    assert tracked_picture == str(Path(tracked.outcome.run_folder) / PREVIEW_FILE)
    assert Path(tracked_picture).is_file()
    assert not list(Path(tracked.outcome.run_folder).glob(f".{PREVIEW_FILE}*"))  # no leftovers


def test_the_picture_has_three_titled_columns_and_a_row_per_shown_image(tracked_picture):
    picture = np.asarray(Image.open(tracked_picture).convert("RGB"))
    assert len(COLUMN_TITLES) == 3
    assert picture.shape[1] == 3 * TILE_HEIGHT + 2 * GAP
    rows = DEFAULT_PREVIEW_SAMPLES * (TILE_HEIGHT + GAP)
    assert rows < picture.shape[0] < rows + 2 * TILE_HEIGHT  # plus the titles and the legend


def test_the_picture_is_evaluations_grid_of_the_first_validation_images(tracked, tracked_picture):
    inference = load_project_checkpoint(tracked.outcome.best_checkpoint)
    manifest = load_manifest(inference.manifest)
    expected = prediction_grid(
        inference, manifest, "val", TestTimeOptions(), DEFAULT_PREVIEW_SAMPLES
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tracked_picture)), expected)


def test_the_tracked_run_gets_the_picture_as_an_artifact_and_stays_finished(
    tracked, tracked_picture, tmp_path
):
    client = mlflow.MlflowClient(tracked.config.tracking.tracking_uri)
    run_id = tracked.outcome.mlflow_run_id
    assert PREVIEW_FILE in [artifact.path for artifact in client.list_artifacts(run_id)]
    logged = client.download_artifacts(run_id, PREVIEW_FILE, str(tmp_path))
    assert Path(logged).read_bytes() == Path(tracked_picture).read_bytes()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_untracked_run_gets_the_picture_in_its_folder_only(config):
    untracked = run_without_ray(config, "untracked", tracked=False)
    picture = write_training_preview(untracked.outcome, untracked.config, num_samples=1)
    assert picture == str(Path(untracked.outcome.run_folder) / PREVIEW_FILE)
    assert Path(picture).is_file()


def test_a_run_without_validation_images_gets_no_picture(config, root):
    manifest = load_manifest(root / "data", verify=False)
    no_val = root / "no-val"
    manifest_file = write_manifest(no_val, replace(manifest, splits={"val": SplitInfo(())}))
    run = run_without_ray(config, "no-val", manifest_file=manifest_file, tracked=False)
    assert write_training_preview(run.outcome, run.config) is None
    assert not (Path(run.outcome.run_folder) / PREVIEW_FILE).exists()


def test_a_picture_that_cannot_be_drawn_leaves_the_job_successful_and_says_so(
    tracked, tmp_path, capsys
):
    missing = str(tmp_path / "gone" / "checkpoint.pt")
    outcome = replace(tracked.outcome, best_checkpoint=missing, latest_checkpoint=missing)
    print_picture(outcome, tracked.config, debug=False)
    printed = capsys.readouterr()
    assert "picture                  not written (InferenceError)" in printed.out
    assert f"checkpoint {missing} not found" in printed.err
    assert "jobs/evaluate.py --run tracked" in printed.err
