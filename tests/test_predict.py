"""Prediction to files: palette masks and overlays written through the actor pool, and the
pictures they are made of."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import png_bytes, write_shard_set
from helpers.jobs import job_main
from PIL import Image

from apcnet import APCNet
from apcnet.checkpoint import save_checkpoint
from pipeline.data.shards import ShardRow
from pipeline.evaluate.actor_pool import plan_actor_pool
from pipeline.evaluate.inference_model import InferenceError
from pipeline.evaluate.pictures import (
    IGNORE_COLOUR,
    colourise,
    confusion_figure,
    overlay,
    palette_png,
)
from pipeline.evaluate.prediction import (
    PredictionRequest,
    list_images,
    predict,
    write_png_atomically,
)

CLASS_NAMES = ("background", "road", "tree")
PALETTE = ((0, 0, 0), (128, 64, 128), (0, 128, 0))
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
IMAGE_SIZES = {"small": (17, 23), "wide": (30, 52), "tall": (41, 19)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = APCNet(len(CLASS_NAMES), backbone="resnet18", channels=16)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, class_names=CLASS_NAMES, palette=PALETTE, mean=MEAN, std=STD)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for name, (height, width) in IMAGE_SIZES.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        suffix = ".jpg" if name == "wide" else ".png"
        Image.fromarray(pixels).save(folder / f"{name}{suffix}")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predicted(ray_session, checkpoint, image_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("masks")
    request = PredictionRequest(
        checkpoint=str(checkpoint),
        input=str(image_folder),
        output=str(output),
        overlay=True,
        actors=1,
    )
    return predict(request)


def test_one_mask_per_input_image_at_its_original_size(predicted):
    output = Path(predicted.output)
    assert sorted(path.name for path in output.glob("*.png")) == sorted(
        f"{name}.png" for name in IMAGE_SIZES
    )
    for name, (height, width) in IMAGE_SIZES.items():
        mask = Image.open(output / f"{name}.png")
        assert (mask.height, mask.width) == (height, width)
        assert predicted.sizes[name] == (height, width)


def test_masks_are_palette_pngs_of_class_indices_in_the_checkpoint_palette(predicted):
    mask = Image.open(Path(predicted.output) / "wide.png")
    assert mask.mode == "P"
    assert np.asarray(mask).max() < len(CLASS_NAMES)
    colours = np.asarray(mask.getpalette()[: 3 * len(PALETTE)]).reshape(-1, 3)
    assert colours.tolist() == [list(colour) for colour in PALETTE]


def test_overlays_are_rgb_pictures_of_each_image(predicted):
    folder = Path(predicted.output) / "overlay"
    for name, (height, width) in IMAGE_SIZES.items():
        picture = Image.open(folder / f"{name}.png")
        assert (picture.mode, picture.height, picture.width) == ("RGB", height, width)


def test_no_temporary_file_is_left_behind(predicted):
    leftovers = [path for path in Path(predicted.output).rglob(".*")]
    assert leftovers == []


def test_a_data_set_split_is_predicted_by_sample_id(ray_session, checkpoint, tmp_path):
    data = tmp_path / "data"
    image = png_bytes(np.zeros((9, 13, 3), dtype=np.uint8))
    mask = png_bytes(np.zeros((9, 13), dtype=np.uint8))
    row = ShardRow("city/frame1", image, mask, 9, 13)
    write_shard_set(data, {"val": [row]}, CLASS_NAMES, PALETTE)
    output = tmp_path / "out"
    job_main("predict")(
        [
            *("--checkpoint", str(checkpoint), "--input", str(data / "manifest.json")),
            *("--output", str(output), "--actors", "1"),
        ]
    )
    assert Image.open(output / "city__frame1.png").size == (13, 9)


def test_folder_without_images_is_refused(tmp_path):
    with pytest.raises(InferenceError, match="holds no images"):
        list_images(tmp_path)


def test_images_that_would_share_an_output_name_are_refused(tmp_path):
    for suffix in (".png", ".jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"same{suffix}")
    with pytest.raises(InferenceError, match=r"same\.jpg and same\.png"):
        list_images(tmp_path)


def test_failed_png_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    class Unsaveable:
        def save(self, stream, format):
            stream.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_png_atomically(Unsaveable(), tmp_path / "mask.png")
    assert list(tmp_path.iterdir()) == []


def test_palette_png_stores_class_indices_and_colours():
    mask = np.array([[0, 1], [2, 255]])
    picture = palette_png(mask, PALETTE)
    assert np.asarray(picture).tolist() == [[0, 1], [2, 255]]
    assert np.asarray(picture.convert("RGB"))[0, 1].tolist() == list(PALETTE[1])
    assert np.asarray(picture.convert("RGB"))[1, 1].tolist() == list(IGNORE_COLOUR)


def test_overlay_blends_labelled_pixels_and_leaves_ignored_ones():
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    blended = overlay(image, np.array([[1, 255]]), PALETTE, alpha=0.5)
    assert blended[0, 0].tolist() == [114, 82, 114]
    assert blended[0, 1].tolist() == [100, 100, 100]


def test_colourise_refuses_values_a_palette_cannot_hold():
    with pytest.raises(ValueError, match=r"0\.\.255"):
        colourise(np.array([[300]]), PALETTE)


def test_confusion_figure_labels_every_class():
    figure = confusion_figure(np.eye(3, dtype=np.int64), CLASS_NAMES)
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert labels == list(CLASS_NAMES)


def test_cpu_pool_reserves_at_most_half_the_cpus_by_default():
    plan = plan_actor_pool(cluster_resources={"CPU": 2.0})
    assert (plan.actors, plan.num_cpus, plan.num_gpus) == (1, 1.0, 0.0)
    two = plan_actor_pool(actors=2, cluster_resources={"CPU": 2.0})
    assert (two.num_cpus, two.torch_threads) == (0.5, 1)


def test_gpu_pool_runs_one_actor_per_gpu():
    plan = plan_actor_pool(cluster_resources={"CPU": 16.0, "GPU": 4.0})
    assert (plan.actors, plan.num_gpus) == (4, 1.0)
