"""The evaluation's sample grid: titled columns above the samples, a legend of the palette's
classes below them (pure pictures, no Ray)."""

import numpy as np
import pytest

from pipeline.data.formats.ade20k import ADE20K_CLASS_NAMES, ADE20K_PALETTE
from pipeline.evaluate.pictures import (
    IGNORE_COLOUR,
    LEGEND_ALL_CLASSES_UP_TO,
    SamplePanel,
    sample_grid,
)

CLASS_NAMES = ("background", "road", "tree")
PALETTE = ((200, 30, 30), (30, 160, 60), (40, 60, 200))
IMAGE_COLOUR = (250, 180, 20)  # in no palette: marks where the image tiles are
TILE_HEIGHT = 40
GAP = 4


def panel(ground_truth: np.ndarray, prediction: np.ndarray) -> SamplePanel:
    image = np.empty((*ground_truth.shape, 3), dtype=np.uint8)
    image[:] = IMAGE_COLOUR
    return SamplePanel(image, ground_truth, prediction)


def wide_panel(truth: int = 1, predicted: int = 2) -> SamplePanel:
    """A 40 x 120 sample: its tiles are wider than any column title."""
    return panel(np.full((40, 120), truth), np.full((40, 120), predicted))


def grid_of(panels, palette=PALETTE, class_names=CLASS_NAMES) -> np.ndarray:
    return sample_grid(panels, palette, class_names, tile_height=TILE_HEIGHT, gap=GAP)


def has(area: np.ndarray, colour) -> np.ndarray:
    """(H, W) bool: where the area has exactly this colour."""
    return (area == np.asarray(colour, dtype=np.uint8)).all(axis=-1)


def colour_counts(area: np.ndarray) -> dict[tuple[int, int, int], int]:
    """How many pixels of the area have each colour."""
    red, green, blue = (area[..., channel].astype(np.int64) for channel in range(3))
    packed, counts = np.unique((red << 16) | (green << 8) | blue, return_counts=True)
    return {
        (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255): int(count)
        for code, count in zip(packed, counts, strict=True)
    }


def tile_rows(grid: np.ndarray) -> np.ndarray:
    return np.flatnonzero(has(grid, IMAGE_COLOUR).any(axis=1))


def title_band(grid: np.ndarray) -> np.ndarray:
    return grid[: tile_rows(grid)[0]]


def legend_band(grid: np.ndarray) -> np.ndarray:
    return grid[tile_rows(grid)[-1] + 1 :]


def dark(area: np.ndarray) -> np.ndarray:
    return area.max(axis=-1) < 128


def test_grid_is_taller_than_its_tiles_by_a_title_row_and_a_legend():
    grid = grid_of([wide_panel(), wide_panel()])
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    rows = tile_rows(grid)
    assert len(rows) == 2 * TILE_HEIGHT
    assert rows[0] >= 10  # a title row above
    assert grid.shape[0] - rows[-1] > 10  # a legend below
    assert grid.shape[0] > 2 * TILE_HEIGHT + GAP + 20


def test_each_sample_row_shows_image_ground_truth_and_prediction_left_to_right():
    grid = grid_of([wide_panel(truth=1, predicted=2)])
    middle = grid[tile_rows(grid)[TILE_HEIGHT // 2]]
    image, truth, prediction = (
        np.flatnonzero(has(middle, colour)) for colour in (IMAGE_COLOUR, *PALETTE[1:])
    )
    assert len(image) == len(truth) == len(prediction) == 120
    assert image[-1] < truth[0] and truth[-1] < prediction[0]


def test_title_row_has_dark_text_above_each_of_the_three_columns():
    grid = grid_of([wide_panel()])
    titles = title_band(grid)
    assert dark(titles).any()
    for column in range(3):
        left = column * (120 + GAP)
        assert dark(titles[:, left : left + 120]).any(), f"column {column} has no title"


def test_columns_stay_aligned_when_samples_differ_in_width():
    narrow = panel(np.full((40, 60), 1), np.full((40, 60), 2))
    grid = grid_of([wide_panel(), narrow])
    first, second = tile_rows(grid)[[0, -1]]
    centres = [np.flatnonzero(has(grid[row], PALETTE[1])).mean() for row in (first, second)]
    assert abs(centres[0] - centres[1]) <= 1


def test_legend_has_a_swatch_of_every_class_colour_followed_by_its_name():
    grid = grid_of([wide_panel(truth=1, predicted=1)])  # class 0 and 2 not in the pictures
    legend = legend_band(grid)
    for colour in PALETTE:
        swatch = has(legend, colour)
        assert swatch.sum() >= 25, f"no swatch of {colour}"
        rows = np.flatnonzero(swatch.any(axis=1))
        right = np.flatnonzero(swatch.any(axis=0))[-1] + 1
        assert dark(legend[rows[0] : rows[-1] + 1, right : right + 40]).any(), "no name"


def test_legend_names_ignored_pixels_only_when_the_pictures_show_some():
    truth = np.full((40, 120), 1)
    truth[:5] = 255
    with_ignored = legend_band(grid_of([panel(truth, np.full((40, 120), 2))]))
    without = legend_band(grid_of([wide_panel()]))
    assert has(with_ignored, IGNORE_COLOUR).sum() >= 25
    assert not has(without, IGNORE_COLOUR).any()


def test_class_names_must_match_the_palette():
    with pytest.raises(ValueError, match="2 class names for a palette of 3"):
        sample_grid([wide_panel()], PALETTE, CLASS_NAMES[:2])


def test_large_palette_legend_lists_only_the_classes_in_the_pictures():
    assert len(ADE20K_CLASS_NAMES) > LEGEND_ALL_CLASSES_UP_TO
    shown = {0, 5, 149}
    truth = np.zeros((40, 120), dtype=np.int64)
    truth[:, 40:] = 5
    prediction = np.full((40, 120), 149)
    legend = legend_band(grid_of([panel(truth, prediction)], ADE20K_PALETTE, ADE20K_CLASS_NAMES))
    for index, colour in enumerate(ADE20K_PALETTE):
        if index in shown:
            assert has(legend, colour).sum() >= 25, ADE20K_CLASS_NAMES[index]
        elif len(set(colour)) > 1:  # greys also appear in anti-aliased text
            assert not has(legend, colour).any(), ADE20K_CLASS_NAMES[index]


def test_all_150_classes_wrap_into_rows_within_the_grid_width():
    every_class = np.arange(150).reshape(10, 15).repeat(4, axis=0).repeat(8, axis=1)
    few = grid_of([wide_panel()], ADE20K_PALETTE, ADE20K_CLASS_NAMES)
    full = grid_of([panel(every_class, every_class[::-1])], ADE20K_PALETTE, ADE20K_CLASS_NAMES)
    assert full.shape[1] == few.shape[1]  # the legend wraps instead of widening the grid
    legend = legend_band(full)
    assert legend.shape[0] > 5 * legend_band(few).shape[0]
    counts = colour_counts(legend)
    assert all(counts.get(tuple(colour), 0) >= 25 for colour in ADE20K_PALETTE)


def test_a_class_name_wider_than_the_grid_is_cut_instead_of_widening_it():
    names = ("background", "x" * 500, "tree")
    long_name = grid_of([wide_panel()], class_names=names)
    assert long_name.shape[1] == grid_of([wide_panel()]).shape[1]
    assert has(legend_band(long_name), PALETTE[1]).sum() >= 25
