"""Pictures of segmentation results: palette masks, overlays, sample grids, confusion matrices.

Pure functions from arrays to arrays (or to a matplotlib figure); writing files and logging
them to MLflow happens in the callers.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Pixels labelled with the ignore index are drawn in this colour (the VOC border colour).
IGNORE_COLOUR = (224, 224, 192)
IGNORED_NAME = "ignored"
COLUMN_TITLES = ("image", "ground truth", "prediction")
# Up to this many classes the legend lists them all; beyond, only those in the pictures.
LEGEND_ALL_CLASSES_UP_TO = 24
FONT_SIZE = 14
TEXT_COLOUR = (0, 0, 0)
SWATCH_OUTLINE = (96, 96, 96)


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
    class_names: Sequence[str],
    ignore_index: int = 255,
    tile_height: int = 160,
    gap: int = 4,
) -> np.ndarray:
    """A titled grid of samples with a legend: uint8 (H, W, 3) on a white background.

    Top to bottom: a title row ("image", "ground truth", "prediction", each centred over its
    column); one row per sample, each tile scaled to tile_height and centred in a column as
    wide as its widest tile or its title; a legend of colour swatches and class names, wrapped
    into as many rows as the width needs.

    The legend lists every class of the palette when there are at most
    LEGEND_ALL_CLASSES_UP_TO; with more (ADE20K's 150) it lists only the classes that appear in
    the shown ground truths or predictions, under a note "classes shown: n of N". "ignored"
    (IGNORE_COLOUR) is listed when ignored pixels are shown. Names too wide for the grid are
    cut with "...".
    Raises ValueError when panels is empty or class_names and palette differ in length.
    """
    if not panels:
        raise ValueError("a sample grid needs at least one sample")
    if len(class_names) != len(palette):
        raise ValueError(f"{len(class_names)} class names for a palette of {len(palette)} colours")
    font = _font()
    rows = []
    for panel in panels:
        tiles = [
            panel.image,
            colourise(panel.ground_truth, palette, ignore_index),
            colourise(panel.prediction, palette, ignore_index),
        ]
        rows.append([_scale_to_height(tile, tile_height) for tile in tiles])
    column_widths = [
        max(max(row[column].shape[1] for row in rows), _text_width(title, font) + 2 * gap)
        for column, title in enumerate(COLUMN_TITLES)
    ]
    lefts = [sum(column_widths[:column]) + gap * column for column in range(len(column_widths))]
    width = lefts[-1] + column_widths[-1]

    body = np.full((len(rows) * (tile_height + gap), width, 3), 255, dtype=np.uint8)
    for row_index, row in enumerate(rows):
        top = row_index * (tile_height + gap)
        for left, column_width, tile in zip(lefts, column_widths, row, strict=True):
            start = left + (column_width - tile.shape[1]) // 2
            body[top : top + tile_height, start : start + tile.shape[1]] = tile

    titles = _text_canvas(width, _line_height(font) + gap)
    draw = ImageDraw.Draw(titles)
    for left, column_width, title in zip(lefts, column_widths, COLUMN_TITLES, strict=True):
        x = left + (column_width - _text_width(title, font)) // 2
        draw.text((x, 0), title, fill=TEXT_COLOUR, font=font)

    entries, note = _legend_entries(panels, palette, class_names, ignore_index)
    legend = _legend(entries, note, width, font, gap)
    return np.concatenate([np.asarray(titles), body, legend])


def _legend_entries(
    panels: Sequence[SamplePanel],
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    ignore_index: int,
) -> tuple[list[tuple[tuple[int, int, int], str]], str | None]:
    """The legend's (colour, name) entries and its note (None when every class is listed)."""
    masks = [mask for panel in panels for mask in (panel.ground_truth, panel.prediction)]
    shown = set(np.unique(np.concatenate([np.unique(mask) for mask in masks])).tolist())
    classes = [index for index in range(len(class_names)) if index != ignore_index]
    note = None
    if len(class_names) > LEGEND_ALL_CLASSES_UP_TO:
        classes = [index for index in classes if index in shown]
        note = f"classes shown: {len(classes)} of {len(class_names)}"
    # The colours the tiles are painted with, so that a swatch matches its pixels exactly.
    table = colour_table(palette, ignore_index)
    entries = [(tuple(table[index].tolist()), class_names[index]) for index in classes]
    if 0 <= ignore_index < 256 and ignore_index in shown:
        entries.append((IGNORE_COLOUR, IGNORED_NAME))
    return entries, note


def _legend(
    entries: Sequence[tuple[tuple[int, int, int], str]],
    note: str | None,
    width: int,
    font,
    gap: int,
) -> np.ndarray:
    """uint8 (H, width, 3): an optional note line, then one cell per entry (a swatch and the
    name), cells of equal width laid out row by row, as many rows as needed."""
    line = _line_height(font)
    glyph_top = font.getbbox("Ag")[1]
    swatch = max(1, line - glyph_top)
    name_width = max(1, width - swatch - gap)
    names = [_fit_text(name, font, name_width) for _, name in entries]
    cell = min(width, max((_text_width(name, font) for name in names), default=0) + swatch + gap)
    # Cells three gaps apart, so that a name is not read as the next swatch's.
    per_row = max(1, (width + 3 * gap) // (cell + 3 * gap))
    legend_rows = -(-len(entries) // per_row)
    top = line + gap if note is not None else 0
    canvas = _text_canvas(width, top + legend_rows * (line + gap))
    draw = ImageDraw.Draw(canvas)
    if note is not None:
        draw.text((0, 0), _fit_text(note, font, width), fill=TEXT_COLOUR, font=font)
    for index, ((colour, _), name) in enumerate(zip(entries, names, strict=True)):
        row, column = divmod(index, per_row)
        x = column * (cell + 3 * gap)
        y = top + row * (line + gap)
        box = (x, y + glyph_top, x + swatch - 1, y + glyph_top + swatch - 1)
        draw.rectangle(box, fill=colour, outline=SWATCH_OUTLINE)
        draw.text((x + swatch + gap, y), name, fill=TEXT_COLOUR, font=font)
    return np.asarray(canvas)


@functools.cache
def _font():
    """Pillow's built-in font (no font file needed), at FONT_SIZE where Pillow can scale it."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow 10.0: a fixed-size bitmap font only
        return ImageFont.load_default()


def _line_height(font) -> int:
    return int(font.getbbox("Ag")[3])


def _text_width(text: str, font) -> int:
    return int(np.ceil(font.getlength(text)))


def _fit_text(text: str, font, max_width: int) -> str:
    """text, or its longest prefix followed by "..." that fits in max_width pixels."""
    if _text_width(text, font) <= max_width:
        return text
    for end in range(len(text) - 1, 0, -1):
        cut = text[:end].rstrip() + "..."
        if _text_width(cut, font) <= max_width:
            return cut
    return "..."


def _text_canvas(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 255, 255))


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
