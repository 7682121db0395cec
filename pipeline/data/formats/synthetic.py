"""The embedded default data set: synthetic outdoor scenes where context decides the label.

Every image has a sky band above a horizon and one of three grounds, each a "stuff" class:
water (harbour scene), road (street scene) or grass (park scene). Objects stand on the ground
at many scales (from about 1/8 to 9/10 of the image width) and occlude each other:

| shape drawn                     | harbour | street | park |
| ------------------------------- | ------- | ------ | ---- |
| grey ellipse with a dark cabin  | boat    | car    |  -   |
| coloured disc with white stripe | buoy    |   -    | ball |

A boat and a car are drawn by the same code from the same colour distribution, as are a buoy
and a ball. The three grounds are one mosaic of blue, grey and green tiles and differ only in
the colours' shares: the scene's own colour covers half the tiles, the other two a quarter
each. So a few tiles of ground, like the inside of an object, can belong to any scene; the
share over the whole image tells which scene it is, and with it the label of every ground and
object pixel. Pooling evidence over the image is what the paper's pyramid of context
(scale 1 = the image-wide average) is built for; `benchmarks/ablation.py` measures how much it
gains over a dilated FCN (benchmarks/RESULTS.md, "Ablation").

Generation is deterministic for (seed, split, index): same arguments, same bytes.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.data.formats.common import IGNORE_INDEX
from pipeline.data.formats.validation import encode_mask_png
from pipeline.data.shard_writer import ShardWriter, prepare_output, write_manifest
from pipeline.data.shards import DEFAULT_MAX_ROWS, FORMAT_VERSION, Manifest, ShardRow

GENERATOR_VERSION = 3  # bump when the scenes change, so old shards are not mistaken for new
SYNTHETIC_CLASS_NAMES = ("sky", "water", "road", "grass", "boat", "car", "buoy", "ball")
SKY, WATER, ROAD, GRASS, BOAT, CAR, BUOY, BALL = range(8)
SYNTHETIC_PALETTE = (
    (135, 190, 240),
    (20, 60, 160),
    (90, 90, 90),
    (40, 150, 40),
    (250, 250, 120),
    (220, 40, 40),
    (250, 140, 0),
    (200, 0, 200),
)
SCENES = ("harbour", "street", "park")
# scene -> (ground class, ellipse class or None, disc class or None)
_SCENE_CLASSES = {
    "harbour": (WATER, BOAT, BUOY),
    "street": (ROAD, CAR, None),
    "park": (GRASS, None, BALL),
}
_SPLIT_CODES = {"train": 0, "val": 1}
_JPEG_QUALITY = 95


@dataclass(frozen=True)
class SyntheticSample:
    """image: (H, W, 3) uint8 RGB; mask: (H, W) uint8 class indices; scene: one of SCENES."""

    image: np.ndarray
    mask: np.ndarray
    scene: str


def render_sample(seed: int, split: str, index: int, size: int) -> SyntheticSample:
    """The `index`-th scene of `split` for `seed`, `size` x `size` pixels."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    scene = SCENES[index % len(SCENES)]
    return _render(rng, scene, size)


def _render(rng: np.random.Generator, scene: str, size: int) -> SyntheticSample:
    ground_class, ellipse_class, disc_class = _SCENE_CLASSES[scene]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = int(size * rng.uniform(0.15, 0.3))
    image = np.empty((size, size, 3), np.float32)
    mask = np.full((size, size), ground_class, np.uint8)
    mask[:horizon] = SKY
    image[:horizon] = _sky(rows[:horizon], horizon)
    image[horizon:] = _ground(rng, ground_class, size - horizon, size)

    # Harbour scenes hold two object classes, the others one: fewer of each keeps them balanced.
    shared = ellipse_class is not None and disc_class is not None
    low, high = (3, 6) if shared else (4, 9)
    objects = []  # (center_y, center_x, scale, class, draw function)
    for label, draw in ((ellipse_class, _draw_ellipse_object), (disc_class, _draw_disc_object)):
        if label is None:
            continue
        for _ in range(int(rng.integers(low, high))):
            scale = float(np.exp(rng.uniform(np.log(size / 8), np.log(size * 0.9))))
            center_y = rng.uniform(horizon + 0.1 * (size - horizon), size * 0.95)
            center_x = rng.uniform(-0.05 * size, 1.05 * size)
            objects.append((center_y, center_x, scale, label, draw))
    # Nearer (lower) objects are drawn last, so they occlude the ones behind.
    for center_y, center_x, scale, label, draw in sorted(objects, key=lambda item: item[0]):
        box, inside = draw(rng, image, rows, cols, center_y, center_x, scale)
        mask[box][inside] = label

    # One noise draw for the whole image; grounds get more of it than sky and objects.
    sigma = _NOISE_SIGMA[mask][..., None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * sigma
    return SyntheticSample(np.clip(image, 0, 255).astype(np.uint8), mask, scene)


_NOISE_SIGMA = np.array([4, 8, 8, 8, 5, 5, 5, 5], np.float32)


def _sky(rows: np.ndarray, horizon: int) -> np.ndarray:
    """A vertical gradient, the same in every scene. Returns (rows, W, 3)."""
    fraction = (rows / max(horizon, 1))[..., None]
    top, bottom = np.array([120, 170, 235], np.float32), np.array([205, 225, 245], np.float32)
    return top + (bottom - top) * fraction


# Every ground is a mosaic of the same three colours (blue, grey, green); only their shares
# differ. At one half for the scene's own colour, a window of a few tiles often shows another
# colour as often as its own, while the whole image's ground nearly always shows its own most.
_GROUND_CLASSES = (WATER, ROAD, GRASS)
_GROUND_COLOURS = np.array([[40, 80, 160], [95, 95, 95], [50, 140, 50]], np.float32)
_OWN_COLOUR_SHARE = 0.5


def _ground(rng: np.random.Generator, ground: int, height: int, size: int) -> np.ndarray:
    """The mosaic ground (before noise) for the `height` rows below the horizon: (height, W, 3).

    Square tiles of about 1/16 of the image side, each one of the three ground colours: the
    scene's own colour with probability `_OWN_COLOUR_SHARE`, each other colour with half the rest.
    """
    tile = max(2, round(size / 16))
    shares = np.full(len(_GROUND_COLOURS), (1 - _OWN_COLOUR_SHARE) / 2)
    shares[_GROUND_CLASSES.index(ground)] = _OWN_COLOUR_SHARE
    # A random grid offset, so that tile edges do not fall on the same pixels in every image.
    offset_y, offset_x = rng.integers(tile, size=2)
    tile_rows = (np.arange(height) + offset_y) // tile
    tile_cols = (np.arange(size) + offset_x) // tile
    colours = rng.choice(
        len(_GROUND_COLOURS), size=(tile_rows[-1] + 1, tile_cols[-1] + 1), p=shares
    )
    return _GROUND_COLOURS[colours[tile_rows[:, None], tile_cols[None, :]]]


def _in_ellipse(
    rows: np.ndarray,
    cols: np.ndarray,
    center_y: float,
    center_x: float,
    half_height: float,
    half_width: float,
) -> np.ndarray:
    """Which of the pixels at (rows, cols) lie inside the axis-aligned ellipse."""
    distance = ((cols - center_x) / half_width) ** 2 + ((rows - center_y) / half_height) ** 2
    return distance <= 1.0


def _box(
    center_y: float, center_x: float, half_height: float, half_width: float, size: int
) -> tuple[slice, slice]:
    """The image slice holding an object's bounding box (clipped to the image)."""
    top, bottom = int(max(0, center_y - half_height)), int(min(size, center_y + half_height + 1))
    left, right = int(max(0, center_x - half_width)), int(min(size, center_x + half_width + 1))
    return slice(top, max(top, bottom)), slice(left, max(left, right))


def _draw_ellipse_object(
    rng: np.random.Generator,
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    center_y: float,
    center_x: float,
    width: float,
) -> tuple[tuple[slice, slice], np.ndarray]:
    """A grey ellipse with a darker cabin on top: a boat or a car, by scene.

    Returns the bounding-box slices and the (box H, box W) bool mask of covered pixels.
    """
    half_width, half_height = width / 2, width * rng.uniform(0.22, 0.3)
    box = _box(center_y, center_x, half_height, half_width, image.shape[0])
    box_rows, box_cols = rows[box], cols[box]
    inside = _in_ellipse(box_rows, box_cols, center_y, center_x, half_height, half_width)
    grey = rng.uniform(150, 215)
    body = np.array([grey, grey, grey * rng.uniform(0.95, 1.05)], np.float32)
    cabin = (box_rows < center_y - 0.2 * half_height) & (
        np.abs(box_cols - center_x) < 0.5 * half_width
    )
    region = image[box]
    region[inside] = body
    region[inside & cabin] = body * 0.55
    return box, inside


def _draw_disc_object(
    rng: np.random.Generator,
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    center_y: float,
    center_x: float,
    diameter: float,
) -> tuple[tuple[slice, slice], np.ndarray]:
    """A bright disc with a white band: a buoy or a ball, by scene.

    Returns the bounding-box slices and the (box H, box W) bool mask of covered pixels.
    """
    radius = diameter * 0.4  # a little smaller than an ellipse of the same scale
    box = _box(center_y, center_x, radius, radius, image.shape[0])
    box_rows, box_cols = rows[box], cols[box]
    inside = (box_cols - center_x) ** 2 + (box_rows - center_y) ** 2 <= radius**2
    hues = np.array([[235, 115, 30], [215, 45, 45], [240, 200, 45]], np.float32)
    color = hues[rng.integers(len(hues))] * rng.uniform(0.9, 1.05)
    region = image[box]
    region[inside] = color
    region[inside & (np.abs(box_rows - center_y) < 0.22 * radius)] = 235
    return box, inside


def encode_jpeg(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB as JPEG bytes (quality 95, no chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def write_synthetic(
    output: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    size: int,
    seed: int,
    overwrite: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Manifest:
    """Generate the synthetic set into `output` (train and val shards + manifest).

    Deterministic: the same arguments give the same bytes. Images are JPEG, masks PNG.
    """
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError(
            f"synthetic data set needs num_train >= 1, num_val >= 1 and size >= 16 "
            f"(got {num_train}, {num_val}, {size})"
        )
    root = prepare_output(output, overwrite=overwrite)
    splits = {}
    for split, count in (("train", num_train), ("val", num_val)):
        with ShardWriter(root, split, max_rows=max_rows) as writer:
            for index in range(count):
                sample = render_sample(seed, split, index, size)
                writer.write(
                    ShardRow(
                        f"{split}-{index:06d}-{sample.scene}",
                        encode_jpeg(sample.image),
                        encode_mask_png(sample.mask),
                        size,
                        size,
                    )
                )
            splits[split] = writer.close()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        dataset="synthetic",
        class_names=SYNTHETIC_CLASS_NAMES,
        palette=SYNTHETIC_PALETTE,
        ignore_index=IGNORE_INDEX,
        splits=splits,
        converter={
            "name": "synthetic",
            "num_train": num_train,
            "num_val": num_val,
            "size": size,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
        },
        root=root.uri,
    )
    write_manifest(root.uri, manifest)
    return manifest
