"""The synthetic data set: deterministic, balanced, and labelled by context."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.data.formats.synthetic import (
    BALL,
    BOAT,
    BUOY,
    CAR,
    GRASS,
    ROAD,
    SCENES,
    SKY,
    SYNTHETIC_CLASS_NAMES,
    WATER,
    render_sample,
    write_synthetic,
)
from pipeline.data.shards import MANIFEST_NAME, load_manifest, read_shard_rows

SIZE = 64
SCENE_COUNT = 90
GROUND_OF_SCENE = {"harbour": WATER, "street": ROAD, "park": GRASS}


@pytest.fixture(scope="module")
def scenes() -> list:
    return [render_sample(0, "train", index, SIZE) for index in range(SCENE_COUNT)]


def interior_pixels(samples: list, label: int) -> np.ndarray:
    """(N, 3) colours of pixels whose 5x5 neighbourhood is all `label`: the object's inside."""
    colours = []
    for sample in samples:
        is_label = sample.mask == label
        interior = is_label.copy()
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                interior &= np.roll(np.roll(is_label, dy, 0), dx, 1)
        colours.append(sample.image[interior])
    return np.concatenate(colours)


def ground_colour_names(image: np.ndarray) -> np.ndarray:
    """(H, W) ground class whose own colour each pixel shows: blue water, grey road, green grass."""
    red, green, blue = (image[..., channel].astype(np.int64) for channel in range(3))
    names = np.full(image.shape[:2], ROAD)
    names[(blue - red > 40) & (blue - green > 30)] = WATER
    names[(green - red > 40) & (green - blue > 40)] = GRASS
    return names


def majority(values: np.ndarray) -> int:
    return int(np.bincount(values.ravel()).argmax())


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    quantised = pixels.astype(np.int64) // 32
    codes = quantised[:, 0] * 64 + quantised[:, 1] * 8 + quantised[:, 2]
    return np.bincount(codes, minlength=512) / len(codes)


def total_variation(first: np.ndarray, second: np.ndarray) -> float:
    return 0.5 * float(np.abs(colour_histogram(first) - colour_histogram(second)).sum())


def test_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    arguments = {"num_train": 6, "num_val": 3, "size": SIZE, "seed": 7}
    write_synthetic(tmp_path / "a", **arguments)
    write_synthetic(tmp_path / "b", **arguments)
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (
        tmp_path / "b" / MANIFEST_NAME
    ).read_bytes()


def test_another_seed_gives_other_images() -> None:
    first = render_sample(1, "train", 0, SIZE)
    second = render_sample(2, "train", 0, SIZE)
    assert not np.array_equal(first.image, second.image)


def test_train_and_val_scenes_differ() -> None:
    assert not np.array_equal(
        render_sample(0, "train", 0, SIZE).image, render_sample(0, "val", 0, SIZE).image
    )


def test_written_set_has_the_requested_splits_and_sizes(tmp_path: Path) -> None:
    manifest = write_synthetic(tmp_path / "set", num_train=5, num_val=2, size=SIZE, seed=0)
    loaded = load_manifest(tmp_path / "set")
    assert loaded == manifest
    assert {name: info.rows for name, info in loaded.splits.items()} == {"train": 5, "val": 2}
    assert loaded.class_names == SYNTHETIC_CLASS_NAMES
    row = read_shard_rows(loaded.shard_uris("train")[0])[0]
    image = Image.open(io.BytesIO(row.image))
    assert (image.format, image.size, row.height, row.width) == ("JPEG", (SIZE, SIZE), SIZE, SIZE)


def test_stored_mask_is_exactly_the_rendered_mask(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "set", num_train=2, num_val=1, size=SIZE, seed=3)
    row = read_shard_rows(load_manifest(tmp_path / "set").shard_uris("train")[0])[1]
    stored = np.asarray(Image.open(io.BytesIO(row.mask)))
    np.testing.assert_array_equal(stored, render_sample(3, "train", 1, SIZE).mask)


def test_stored_image_is_close_to_the_rendered_image(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "set", num_train=1, num_val=1, size=SIZE, seed=3)
    row = read_shard_rows(load_manifest(tmp_path / "set").shard_uris("train")[0])[0]
    stored = np.asarray(Image.open(io.BytesIO(row.image)).convert("RGB")).astype(np.float32)
    rendered = render_sample(3, "train", 0, SIZE).image.astype(np.float32)
    assert np.abs(stored - rendered).mean() < 4.0


def test_every_class_is_present_and_none_dominates(scenes: list) -> None:
    counts = np.zeros(len(SYNTHETIC_CLASS_NAMES))
    for sample in scenes:
        counts += np.bincount(sample.mask.ravel(), minlength=len(counts))
    shares = counts / counts.sum()
    assert shares.min() > 0.02, dict(zip(SYNTHETIC_CLASS_NAMES, shares.round(3), strict=True))
    assert shares.max() < 0.35, dict(zip(SYNTHETIC_CLASS_NAMES, shares.round(3), strict=True))


def test_scene_types_rotate_evenly(scenes: list) -> None:
    kinds = [sample.scene for sample in scenes]
    assert {kind: kinds.count(kind) for kind in SCENES} == {kind: 30 for kind in SCENES}


def test_objects_appear_at_several_scales(scenes: list) -> None:
    widths = []
    for sample in scenes:
        regions, _ = ndimage.label(sample.mask == CAR)
        for _, cols in ndimage.find_objects(regions):
            widths.append(cols.stop - cols.start)
    assert min(widths) <= SIZE // 8 and max(widths) >= SIZE // 2


def test_boat_and_car_look_the_same_inside(scenes: list) -> None:
    same_look = total_variation(interior_pixels(scenes, BOAT), interior_pixels(scenes, CAR))
    assert same_look < 0.25


def test_a_few_tiles_of_ground_do_not_tell_the_scene_but_the_whole_image_does(
    scenes: list,
) -> None:
    # Vote with the ground's colours: in a window the size of one stride-8 feature cell
    # (2 x 2 tiles), and over all the ground in the image.
    window = SIZE // 8
    window_votes, image_votes = [], []
    for sample in scenes:
        ground = GROUND_OF_SCENE[sample.scene]
        is_ground, colours = sample.mask == ground, ground_colour_names(sample.image)
        image_votes.append(majority(colours[is_ground]) == ground)
        for top in range(0, SIZE - window + 1, window):
            for left in range(0, SIZE - window + 1, window):
                cell = (slice(top, top + window), slice(left, left + window))
                if is_ground[cell].all():
                    window_votes.append(majority(colours[cell].ravel()) == ground)
    assert len(window_votes) > 5 * len(scenes)
    assert np.mean(window_votes) < 0.75
    assert np.mean(image_votes) > 0.95


def test_buoy_and_ball_look_the_same_inside(scenes: list) -> None:
    assert total_variation(interior_pixels(scenes, BUOY), interior_pixels(scenes, BALL)) < 0.25


def test_the_label_of_an_object_follows_its_scene(scenes: list) -> None:
    for sample in scenes:
        present = set(np.unique(sample.mask).tolist()) - {SKY}
        if sample.scene == "harbour":
            assert present <= {WATER, BOAT, BUOY}
        if sample.scene == "street":
            assert present <= {ROAD, CAR}
        if sample.scene == "park":
            assert CAR not in present and BOAT not in present


def test_too_small_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size >= 16"):
        write_synthetic(tmp_path / "set", num_train=1, num_val=1, size=8, seed=0)
