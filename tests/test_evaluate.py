"""Batch evaluation: exact distributed counts, the MLflow evaluation run, reference checkpoints,
and refusing bad input before anything is logged."""

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers.datasets import png_bytes, write_shard_set, write_split
from PIL import Image

from apcnet import APCNet
from apcnet.checkpoint import save_checkpoint
from apcnet.mmseg import apcnet_key_to_reference
from pipeline.data.shard_writer import write_manifest
from pipeline.data.shards import DatasetError, ShardRow, load_manifest
from pipeline.evaluate.counts import SplitCounts, evaluate_locally, image_counts
from pipeline.evaluate.evaluation import (
    EvaluationRequest,
    evaluate,
    load_evaluation_model,
    read_split_samples,
)
from pipeline.evaluate.inference_model import InferenceError, load_project_checkpoint
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.tracking.runs import RunTracker

CLASS_NAMES = ("background", "road", "tree")
PALETTE = ((0, 0, 0), (128, 64, 128), (0, 128, 0))
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# Five images (odd), four sizes, two shards of at most two rows plus one of one row.
SIZES = ((24, 32), (40, 28), (24, 32), (33, 45), (17, 21))
# Twelve forward passes an image: an actor counts an image for longer than Ray Data takes to
# hand over the next one-image block (a task each, about 70 ms here), so the pool's second
# actor gets work. With one pass, the first ready actor finished each image before the next
# arrived and counted the whole split: correct, but the summation over actors went untested.
MULTI_SCALE_FLIP = TestTimeOptions(
    mode="msflip", ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True
)
TRAINING_RUN = "tiny-training-run"


def random_rows(sizes, num_classes: int) -> list[ShardRow]:
    """Random images and masks of the given (height, width), about a tenth of pixels 255."""
    rng = np.random.default_rng(0)
    rows = []
    for index, (height, width) in enumerate(sizes):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, (height, width), dtype=np.uint8)
        mask[rng.random((height, width)) < 0.1] = 255
        rows.append(ShardRow(f"img{index}", png_bytes(image), png_bytes(mask), height, width))
    return rows


def write_tiny_dataset(root: Path, sizes=SIZES, class_names=CLASS_NAMES) -> Path:
    """A prepared data set with a `val` split of random images and masks (some pixels 255)."""
    rows = random_rows(sizes, len(class_names))
    palette = PALETTE[: len(class_names)]
    write_shard_set(root, {"val": rows}, class_names, palette, max_rows=2)
    return root


def tiny_model(num_classes: int = 3, seed: int = 0) -> APCNet:
    torch.manual_seed(seed)
    return APCNet(num_classes, backbone="resnet18", channels=16).eval()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path,
        tiny_model(),
        class_names=CLASS_NAMES,
        palette=PALETTE,
        mean=MEAN,
        std=STD,
        extra={"manifest": str(data_dir), "run_name": TRAINING_RUN},
    )
    return path


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def training_run_id(tracking_uri) -> str:
    with RunTracker.open(TRAINING_RUN, tracking_uri=tracking_uri, experiment="eval-tests") as run:
        return run.run_id


@pytest.fixture(scope="module")
def report(ray_session, checkpoint, tracking_uri, training_run_id):
    """One distributed evaluation over two actors at half a CPU each, tracked in MLflow, with
    multi-scale and flip test-time augmentation (MULTI_SCALE_FLIP)."""
    return evaluate(
        EvaluationRequest(
            checkpoint=str(checkpoint),
            options=MULTI_SCALE_FLIP,
            actors=2,
            cpus_per_actor=0.5,
            tracking_uri=tracking_uri,
            experiment="eval-tests",
            num_samples=2,
        )
    )


def runs_in(tracking_uri: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_image_counts_follow_the_definition_of_intersection_union_and_confusion():
    prediction = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [2, 255]])
    counts, confusion = image_counts(prediction, target, 3, 255)
    assert counts.tolist() == [[1, 1, 0], [1, 2, 1], [1, 1, 1]]
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]


def test_summing_an_ade20k_sized_split_holds_its_image_ids_not_its_per_image_counts():
    # ADE20K's training split: 20,210 images of 150 classes; per-image (3, C) counts alone
    # would be 73 MB on the driver.
    import tracemalloc

    classes, images = 150, 20_210
    counts = np.ones((3, classes), dtype=np.int64)
    confusion = np.eye(classes, dtype=np.int64)
    totals = SplitCounts.empty(classes)
    tracemalloc.start()
    for index in range(images):
        totals.add(f"ADE_train_{index:08d}", counts, confusion)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert totals.num_images == images and totals.per_image is None
    assert int(totals.intersection_union[0, 0]) == images
    # The ids and the set growing: about 4 MiB (with per-image counts: 76 MiB).
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_distributed_counts_equal_the_single_process_loop_count_for_count(report, checkpoint):
    inference, manifest = load_evaluation_model(EvaluationRequest(checkpoint=str(checkpoint)))
    samples = list(read_split_samples(manifest, "val", inference.mean, inference.std))
    local = evaluate_locally(inference.model, samples, MULTI_SCALE_FLIP, 3)
    assert report.counts.num_images == len(SIZES)
    assert len(report.counts.workers) == 2
    assert report.counts.image_ids == local.image_ids
    np.testing.assert_array_equal(report.counts.intersection_union, local.intersection_union)
    np.testing.assert_array_equal(report.counts.confusion, local.confusion)


def test_every_labelled_pixel_of_the_split_is_counted_once(report, checkpoint):
    inference, manifest = load_evaluation_model(EvaluationRequest(checkpoint=str(checkpoint)))
    samples = read_split_samples(manifest, "val", inference.mean, inference.std)
    labelled = sum(int((sample.mask != 255).sum()) for sample in samples)
    assert report.counts.labelled_pixels == labelled
    assert int(report.counts.confusion.sum()) == labelled


def test_evaluation_run_holds_split_prefixed_metrics_and_links_to_its_training_run(
    report, tracking_uri, training_run_id
):
    run = mlflow.MlflowClient(tracking_uri).get_run(report.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_miou"] == pytest.approx(report.scores.miou)
    assert run.data.metrics["val_pixel_accuracy"] == pytest.approx(report.scores.pixel_accuracy)
    assert {f"val_iou/{name}" for name in CLASS_NAMES} <= run.data.metrics.keys()
    assert run.data.tags["apcnet.training_run_id"] == training_run_id
    assert run.data.tags["apcnet.training_run_name"] == TRAINING_RUN
    assert run.data.params["test_mode"] == "msflip"
    assert run.data.params["test_flip"] == "True"


def test_evaluation_run_holds_the_table_confusion_matrix_and_sample_grid(report, tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    names = {artifact.path for artifact in client.list_artifacts(report.mlflow_run_id)}
    expected = {
        "val_per_class_iou.csv",
        "val_per_class_iou.txt",
        "val_confusion.json",
        "val_confusion.png",
        "val_samples.png",
    }
    assert expected <= names
    table = Path(client.download_artifacts(report.mlflow_run_id, "val_per_class_iou.csv"))
    assert all(name in table.read_text() for name in CLASS_NAMES)
    grid = Image.open(client.download_artifacts(report.mlflow_run_id, "val_samples.png"))
    assert grid.height > 2 * 160  # two sample rows


def test_printed_table_names_every_class_and_the_miou(report):
    assert all(name in report.table for name in CLASS_NAMES)
    assert f"mIoU {100 * report.scores.miou:.2f}" in report.table


def test_reference_toolbox_checkpoint_evaluates_with_the_manifest_classes(
    ray_session, tmp_path, data_dir
):
    torch.manual_seed(0)
    model = APCNet(3, backbone="resnet50_v1c", channels=16).eval()
    reference = {apcnet_key_to_reference(key): value for key, value in model.state_dict().items()}
    path = tmp_path / "apcnet_r50.pth"
    torch.save({"meta": {"CLASSES": CLASS_NAMES}, "state_dict": reference}, path)
    result = evaluate(
        EvaluationRequest(mmseg_checkpoint=str(path), data=str(data_dir), actors=1, track=False)
    )
    assert result.class_names == CLASS_NAMES
    assert result.counts.num_images == len(SIZES)
    assert 0.0 <= result.scores.pixel_accuracy <= 1.0


def test_reference_toolbox_checkpoint_requires_a_data_set(tmp_path):
    with pytest.raises(InferenceError, match="--data"):
        load_evaluation_model(EvaluationRequest(mmseg_checkpoint=str(tmp_path / "x.pth")))


def test_checkpoint_with_another_number_of_classes_is_refused_before_any_run(tmp_path, data_dir):
    path = tmp_path / "five.pt"
    names = [f"c{index}" for index in range(5)]
    palette = [(index, index, index) for index in range(5)]
    save_checkpoint(path, tiny_model(5), class_names=names, palette=palette, mean=MEAN, std=STD)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    request = EvaluationRequest(checkpoint=str(path), data=str(data_dir), tracking_uri=uri)
    with pytest.raises(InferenceError, match="predicts 5 classes"):
        evaluate(request)
    assert not (tmp_path / "mlflow.db").exists() or runs_in(uri) == []


def test_checkpoint_with_other_class_names_is_refused(tmp_path, data_dir):
    path = tmp_path / "renamed.pt"
    save_checkpoint(
        path, tiny_model(), class_names=("a", "b", "c"), palette=PALETTE, mean=MEAN, std=STD
    )
    with pytest.raises(InferenceError, match="class names"):
        load_evaluation_model(EvaluationRequest(checkpoint=str(path), data=str(data_dir)))


def test_missing_split_is_refused_with_the_available_splits(checkpoint):
    with pytest.raises(DatasetError, match=r"no split 'test'.*available: val"):
        load_evaluation_model(EvaluationRequest(checkpoint=str(checkpoint), split="test"))


def test_unreadable_checkpoint_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InferenceError, match=r"cannot read checkpoint .*broken.pt"):
        load_evaluation_model(EvaluationRequest(checkpoint=str(path)))


def test_ray_checkpoint_folder_is_accepted_in_place_of_the_file(tmp_path, checkpoint):
    folder = tmp_path / "epoch_0003"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    inference, _ = load_evaluation_model(EvaluationRequest(checkpoint=str(folder)))
    assert inference.class_names == CLASS_NAMES


def test_an_older_checkpoint_without_its_run_name_gets_it_from_the_training_folder(tmp_path):
    # Training keeps checkpoints at <storage>/<run name>/epoch_NNNN/checkpoint.pt.
    folder = tmp_path / "runs" / "older-run" / "epoch_0004"
    save_checkpoint(
        folder / "checkpoint.pt",
        tiny_model(),
        class_names=CLASS_NAMES,
        palette=PALETTE,
        mean=MEAN,
        std=STD,
    )
    assert load_project_checkpoint(folder).training_run == "older-run"


def test_sliding_window_without_a_crop_is_an_option_error():
    with pytest.raises(ValueError, match="--crop"):
        TestTimeOptions(mode="slide")


def test_evaluation_that_crashes_leaves_its_run_marked_failed(ray_session, tmp_path, checkpoint):
    # Masks labelled up to class 4 while the model and manifest know 3 classes: the actors
    # fail while counting, after the run was created.
    data = write_tiny_dataset(tmp_path / "data", sizes=((9, 11),))
    image = png_bytes(np.zeros((9, 11, 3), dtype=np.uint8))
    bad = ShardRow("bad", image, png_bytes(np.full((9, 11), 4, np.uint8)), 9, 11)
    test_split = write_split(tmp_path / "data", "test", [bad])
    manifest = load_manifest(data)
    write_manifest(data, replace(manifest, splits={**manifest.splits, "test": test_split}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    request = EvaluationRequest(
        checkpoint=str(checkpoint), data=str(data), split="test", actors=1, tracking_uri=uri
    )
    with pytest.raises(Exception, match="target labels must lie in"):
        evaluate(request)
    assert [run.info.status for run in runs_in(uri)] == ["FAILED"]


def test_unknown_training_run_is_refused_naming_the_run(tmp_path):
    request = EvaluationRequest(run="never-trained", storage_path=str(tmp_path))
    with pytest.raises(InferenceError, match="training run 'never-trained'"):
        load_evaluation_model(request)
