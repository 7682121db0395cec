"""Paired image/mask augmentation for training, in numpy (no Ray).

Every geometric step moves the image and its label mask together, so a pixel's label always
describes the pixel under it. Images are HxWx3 uint8 RGB and masks HxW uint8 class indices
(255 = ignore) until the last step, which turns the image into a normalised float32 (3, H, W)
array and the mask into int64 (H, W).

The steps follow the reference toolbox's training pipeline in its order: random rescale,
random crop (retried while one class dominates), horizontal flip, optional photometric
distortion, normalisation, then padding to the crop size. Images are resized bilinearly with
pixel centres aligned (OpenCV's INTER_LINEAR, as the reference toolbox resizes; within 1 of
torch's `interpolate(align_corners=False)` and 2-3x faster); masks only ever with nearest
neighbour (the same pixel-centre convention as the image, so labels stay on their pixels after
any scale).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config.augmentation import AugmentationConfig

# torch is not imported here, nor anywhere on the decode path (about 1.5 s of CPU to import on
# a small node, in every Ray Data decode process and in Ray Train's controller and split
# coordinators, which unpickle the training data sets and so import this module).

# ---------------------------------------------------------------- decoding


def decode_image(data: bytes) -> np.ndarray:
    """Decode image file bytes (JPEG, PNG, ...) to RGB: uint8 (H, W, 3).

    JPEGs go through OpenCV's libjpeg-turbo decoder (the same pixels as PIL's, twice as fast
    at 500x375 and 6x at 1024x2048), everything else through PIL. Grayscale, palette and
    alpha images are converted to RGB; EXIF orientation is ignored, as PIL does, so that an
    image stays on the pixel grid of its mask.
    """
    if not data:
        raise ValueError("decode_image: got empty bytes; the shard row has no image data")
    with _open_image(data, "image", load=False) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            cv2 = _opencv()
            flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
            decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
            if decoded is not None:
                return decoded
        # Other JPEG flavours (CMYK) and a JPEG OpenCV cannot read: PIL, whose error names it.
        _load_pixels(image, data, "image")
        return np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only)


@cache
def _opencv() -> Any:
    """OpenCV, imported on first use with one thread: a decode task holds one CPU (Ray Data's
    `num_cpus`), so OpenCV's own thread pool would only compete with the other tasks."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def decode_mask(data: bytes) -> np.ndarray:
    """Decode a single-channel 8-bit PNG of class indices to uint8 (H, W).

    Palette PNGs keep their indices (the pixel values are the classes, as in VOC), at any
    bit depth. PIL is used on purpose: torchvision rescales 1/2/4-bit palette indices.
    """
    if not data:
        raise ValueError("decode_mask: got empty bytes; the shard row has no mask data")
    with _open_image(data, "mask") as image:
        if image.mode not in ("L", "P"):
            raise ValueError(
                f"decode_mask: expected a single-channel 8-bit PNG of class indices (mode L "
                f"or P), got mode {image.mode}; re-run the data preparation job"
            )
        return np.array(image)  # a writable copy (torch warns on read-only)


def _open_image(data: bytes, what: str, load: bool = True) -> Image.Image:
    """The image in `data`, its pixels decoded unless `load` is False (then only its header is
    read); a ValueError naming `what` if PIL cannot read it."""
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"decode_{what}: cannot decode {len(data)} bytes: {error}") from error
    if load:
        _load_pixels(image, data, what)
    return image


def _load_pixels(image: Image.Image, data: bytes, what: str) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise ValueError(f"decode_{what}: cannot decode {len(data)} bytes: {error}") from error


# ---------------------------------------------------------------- geometry


def rescaled_size(
    height: int, width: int, ratio: float, base_scale: tuple[int, int] | None
) -> tuple[int, int]:
    """The (height, width) an image of this size gets for one random ratio.

    With base_scale (long, short) the image is fitted, aspect kept, inside
    (long * ratio, short * ratio); without it the ratio multiplies the size directly.
    """
    if base_scale is None:
        factor = ratio
    else:
        long_side, short_side = base_scale[0] * ratio, base_scale[1] * ratio
        factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def rescale(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (H, W, 3) uint8 bilinearly and mask (H, W) uint8 by nearest to size (h, w)."""
    if image.shape[:2] == tuple(size):
        return image, mask
    height, width = size
    cv2 = _opencv()
    resized_image = cv2.resize(
        np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR
    )
    rows = _nearest_source_indices(mask.shape[0], height)
    columns = _nearest_source_indices(mask.shape[1], width)
    return resized_image, mask.take(rows, axis=0).take(columns, axis=1)


def _nearest_source_indices(source: int, target: int) -> np.ndarray:
    """For each of `target` pixels, the source pixel whose centre is nearest to its centre:
    the pixel the bilinear image samples at (torch's "nearest-exact" rule; torch rounds the
    position through float32, which for a few sizes picks the neighbouring pixel)."""
    centres = (np.arange(target) + 0.5) * (source / target)
    return np.minimum(centres.astype(np.int64), source - 1)


def random_rescale(
    image: np.ndarray, mask: np.ndarray, config: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale image (H, W, 3) and mask (H, W) by a ratio drawn from config.scale_range."""
    ratio = rng.uniform(*config.scale_range)
    size = rescaled_size(image.shape[0], image.shape[1], ratio, config.base_scale)
    return rescale(image, mask, size)


def _dominant_class_fraction(mask: np.ndarray, ignore_index: int) -> tuple[int, float]:
    """(number of classes present, largest class's share of labelled pixels) of a mask."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[ignore_index] = 0
    total = counts.sum()
    if total == 0:
        return 0, 1.0
    return int(np.count_nonzero(counts)), float(counts.max() / total)


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    retries: int = 10,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the same random window, at most crop_size, out of image (H, W, 3) and mask (H, W).

    With cat_max_ratio < 1 a window is redrawn, up to `retries` windows in all, until it holds
    more than one class and no class covers more than cat_max_ratio of its labelled pixels;
    when none qualifies the last window is kept. Dimensions smaller than the crop are kept
    whole (padding comes later).
    """
    height, width = mask.shape
    crop_height, crop_width = min(crop_size[0], height), min(crop_size[1], width)
    attempts = retries if cat_max_ratio < 1.0 else 1
    for _ in range(attempts):
        top = int(rng.integers(0, height - crop_height + 1))
        left = int(rng.integers(0, width - crop_width + 1))
        mask_crop = mask[top : top + crop_height, left : left + crop_width]
        if attempts == 1:
            break
        classes, dominant = _dominant_class_fraction(mask_crop, ignore_index)
        if classes > 1 and dominant < cat_max_ratio:
            break
    return image[top : top + crop_height, left : left + crop_width], mask_crop


def horizontal_flip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image (H, W, C) and mask (H, W) left to right (views, no copy)."""
    return image[:, ::-1], mask[:, ::-1]


def pad_to_size(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    image_fill: Sequence[int] | int = 0,
    mask_fill: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad image (H, W, C) and mask (H, W) at the bottom/right up to at least size (h, w).

    The image is filled with image_fill (one value or one per channel) and the mask with
    mask_fill (the ignore index, so padding never trains).
    """
    height, width = mask.shape
    target_height, target_width = max(size[0], height), max(size[1], width)
    if (target_height, target_width) == (height, width):
        return image, mask
    padded_image = np.empty((target_height, target_width, image.shape[2]), dtype=image.dtype)
    padded_image[...] = np.asarray(image_fill, dtype=image.dtype)
    padded_image[:height, :width] = image
    padded_mask = np.full((target_height, target_width), mask_fill, dtype=mask.dtype)
    padded_mask[:height, :width] = mask
    return padded_image, padded_mask


def mean_colour(config: AugmentationConfig) -> tuple[int, int, int]:
    """The normalisation mean as uint8 RGB: what padding is filled with. The reference pads
    the normalised image with 0 (the mean exactly); rounded to uint8 this differs from it by
    at most 0.5/std (under 0.01 for ImageNet's std), on pixels whose labels are ignored."""
    red, green, blue = (round(value) for value in config.mean)
    return red, green, blue


# ---------------------------------------------------------------- colour


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 RGB (H, W, 3) in 0-255 -> hue in degrees [0, 360), saturation [0, 1], value."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    safe_chroma = np.where(chroma > 0, chroma, 1)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0)
    hue = np.where(
        value == red,
        (green - blue) / safe_chroma,
        np.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma),
    )
    hue = np.where(chroma > 0, (hue * 60) % 360, 0)
    return hue.astype(np.float32), saturation.astype(np.float32), value


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Inverse of _rgb_to_hsv: returns float32 RGB (H, W, 3) in 0-255."""
    sector = hue / 60.0
    chroma = value * saturation
    offsets = np.stack([5.0, 3.0, 1.0])  # red, green, blue phase of the HSV hexagon
    k = (offsets[:, None, None] + sector[None]) % 6
    weight = np.clip(np.minimum(k, 4 - k), 0, 1)
    return np.moveaxis(value[None] - chroma[None] * weight, 0, -1).astype(np.float32)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue on an RGB uint8 (H, W, 3) image.

    The reference's order: brightness; contrast either first or last (a coin flip); then
    saturation and hue in HSV. Each change happens with probability 0.5. Returns uint8.
    """
    result = image.astype(np.float32)
    if rng.random() < 0.5:
        result = np.clip(result + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        result = np.clip(result * rng.uniform(0.5, 1.5), 0, 255)
    change_saturation = rng.random() < 0.5
    saturation_factor = rng.uniform(0.5, 1.5) if change_saturation else 1.0
    change_hue = rng.random() < 0.5
    # The reference draws an integer shift in OpenCV's half-degree hue units (0-180).
    hue_shift_degrees = 2.0 * int(rng.integers(-18, 19)) if change_hue else 0.0
    if change_saturation or change_hue:
        hue, saturation, value = _rgb_to_hsv(result)
        saturation = np.clip(saturation * saturation_factor, 0, 1)
        hue = (hue + hue_shift_degrees) % 360
        result = _hsv_to_rgb(hue, saturation, value)
    if not contrast_first and rng.random() < 0.5:
        result = np.clip(result * rng.uniform(0.5, 1.5), 0, 255)
    return np.round(result).astype(np.uint8)


def normalize(
    image: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) as (value - mean) / std per channel."""
    height, width = image.shape[:2]
    output = np.empty((3, height, width), dtype=np.float32)
    # Channel by channel into a preallocated array: about 5x faster than broadcasting.
    for channel in range(3):
        np.subtract(image[:, :, channel], mean[channel], out=output[channel], dtype=np.float32)
        output[channel] *= 1.0 / std[channel]
    return output


# ---------------------------------------------------------------- the whole pipeline


def augment_sample(
    image: np.ndarray,
    mask: np.ndarray,
    config: AugmentationConfig,
    rng: np.random.Generator,
    *,
    pad: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the full training augmentation to one sample.

    image: uint8 (H, W, 3) RGB; mask: uint8 (H, W) class indices.
    Returns image uint8 (crop_h, crop_w, 3) and mask uint8 (crop_h, crop_w): the output shape
    is always config.crop_size, padded at the bottom/right with `mean_colour` and the ignore
    index (without `pad`, as cropped: at most the crop size). Normalisation (`normalize`, or
    `pipeline.train.step` on the training worker's device) comes after: uint8 travels at a
    quarter of float32's size.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"augment_sample: image is {image.shape[:2]} but mask is {mask.shape}; "
            f"image and mask of a sample must have the same height and width"
        )
    image, mask = random_rescale(image, mask, config, rng)
    image, mask = random_crop(
        image,
        mask,
        config.crop_size,
        rng,
        cat_max_ratio=config.cat_max_ratio,
        retries=config.crop_retries,
        ignore_index=config.ignore_index,
    )
    if rng.random() < config.flip_prob:
        image, mask = horizontal_flip(image, mask)
    if config.photometric:
        image = photometric_distortion(image, rng)
    if not pad:
        return image, mask
    return pad_to_size(
        image, mask, config.crop_size, image_fill=mean_colour(config), mask_fill=config.ignore_index
    )
