"""Pictures of segmentation results: palette masks, overlays, sample grids, confusion matrices.

Pure functions from arrays to arrays (or to a matplotlib figure); writing files and logging
them to MLflow happens in the callers.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pixels labelled with the ignore index are drawn in this colour (the VOC border colour).
IGNORE_COLOUR = (224, 224, 192)


@dataclass(frozen=True)
class SamplePanel:
    """One row of a sample grid.

    image: uint8 (H, W, 3) RGB; ground_truth and prediction: integer (H, W) class indices.
    """

    image: np.ndarray
    ground_truth: np.ndarray
    prediction: np.ndarray


def colour_table(palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """A uint8 (256, 3) lookup table: class index -> RGB colour.

    Classes beyond the palette are black; the ignore index gets IGNORE_COLOUR.
    Raises ValueError when the palette has more than 256 colours or a colour is not RGB.
    """
    colours = np.asarray(palette, dtype=np.int64)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256:
        raise ValueError(
            f"palette must be a list of at most 256 [r, g, b] colours, got shape {colours.shape}"
        )
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = np.clip(colours, 0, 255)
    if 0 <= ignore_index < 256:
        table[ignore_index] = IGNORE_COLOUR
    return table


def colourise(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255):
    """Colour a class-index mask: integer (H, W) -> uint8 (H, W, 3)."""
    indices = np.asarray(mask)
    if indices.min(initial=0) < 0 or indices.max(initial=0) > 255:
        raise ValueError("mask values must lie in 0..255 to be coloured with a palette")
    return colour_table(palette, ignore_index)[indices.astype(np.uint8)]


def palette_png(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> Image.Image:
    """A palette ("P" mode) PIL image: pixel values are the class indices of the (H, W) mask,
    the embedded palette gives their colours, so the file is both a label map and a picture."""
    indices = np.asarray(mask)
    if indices.min(initial=0) < 0 or indices.max(initial=0) > 255:
        raise ValueError("mask values must lie in 0..255 to be stored as a palette PNG")
    picture = Image.fromarray(indices.astype(np.uint8), mode="P")
    picture.putpalette(colour_table(palette, ignore_index).reshape(-1).tolist())
    return picture


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend the mask's colours over the image: uint8 (H, W, 3) and (H, W) -> uint8 (H, W, 3).

    alpha is the weight of the mask colour; ignored pixels keep the image unchanged.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must lie in [0, 1], got {alpha}")
    colours = colourise(mask, palette, ignore_index).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    blended[mask == ignore_index] = image[mask == ignore_index]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def sample_grid(
    panels: Sequence[SamplePanel],
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
    tile_height: int = 160,
    gap: int = 4,
) -> np.ndarray:
    """One row per sample: image | ground truth | prediction, each scaled to tile_height.

    Returns uint8 (rows * tile_height + gaps, width, 3) on a white background.
    """
    if not panels:
        raise ValueError("a sample grid needs at least one sample")
    rows = []
    for panel in panels:
        tiles = [
            panel.image,
            colourise(panel.ground_truth, palette, ignore_index),
            colourise(panel.prediction, palette, ignore_index),
        ]
        rows.append([_scale_to_height(tile, tile_height) for tile in tiles])
    width = max(sum(tile.shape[1] for tile in row) + gap * 2 for row in rows)
    height = len(rows) * tile_height + gap * (len(rows) - 1)
    grid = np.full((height, width, 3), 255, dtype=np.uint8)
    for row_index, row in enumerate(rows):
        top = row_index * (tile_height + gap)
        left = 0
        for tile in row:
            grid[top : top + tile_height, left : left + tile.shape[1]] = tile
            left += tile.shape[1] + gap
    return grid


def _scale_to_height(tile: np.ndarray, height: int) -> np.ndarray:
    """Resize a uint8 (H, W, 3) tile to the given height, keeping its aspect ratio;
    nearest neighbour so that label colours stay exact."""
    width = max(1, round(tile.shape[1] * height / tile.shape[0]))
    resized = Image.fromarray(tile).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]):
    """A matplotlib Figure of the (C, C) confusion matrix (rows: ground truth, columns:
    prediction), each row normalised to the share of that class's labelled pixels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion matrix {counts.shape} does not match {len(class_names)} class names"
        )
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    size = min(4.0 + 0.3 * len(class_names), 40.0)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    shown = axes.imshow(shares, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
    axes.set_yticks(ticks, labels=list(class_names), fontsize=7)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion matrix (share of each ground-truth class)")
    figure.tight_layout()
    return figure
