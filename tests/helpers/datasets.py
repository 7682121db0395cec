"""Tiny prepared data sets for tests, written by the project's own writers: the built-in
synthetic scenes, or shards of rows a test makes itself."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.formats.synthetic import write_synthetic
from pipeline.data.shard_writer import ShardWriter, write_manifest
from pipeline.data.shards import (
    DEFAULT_MAX_ROWS,
    DEFAULT_ROW_GROUP_ROWS,
    FORMAT_VERSION,
    Manifest,
    ShardRow,
    SplitInfo,
    load_manifest,
)

Colour = tuple[int, int, int]


def tiny_synthetic_set(folder: Path, *, num_val: int = 4) -> Path:
    """The synthetic scenes at 32 px, 8 train and `num_val` val images (seed 0), in `folder`,
    unless a data set is already there; returns `folder`."""
    if not (folder / "manifest.json").exists():
        write_synthetic(folder, num_train=8, num_val=num_val, size=32, seed=0)
    return folder


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 image, (H, W, 3) RGB or (H, W) labels, as lossless PNG bytes (a shard row's
    encoding)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(
    root: Path,
    split: str,
    rows: Iterable[ShardRow],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> SplitInfo:
    """`rows` as the shards of `split` under `root`, `max_rows` a shard in row groups of
    `row_group_rows`; the manifest is left to the caller."""
    with ShardWriter(root, split, max_rows=max_rows, row_group_rows=row_group_rows) as writer:
        for row in rows:
            writer.write(row)
        return writer.close()


def write_shard_set(
    root: Path,
    splits: Mapping[str, Iterable[ShardRow]],
    class_names: Sequence[str],
    palette: Sequence[Colour],
    *,
    dataset: str = "tiny",
    max_rows: int = DEFAULT_MAX_ROWS,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> Manifest:
    """A prepared data set of the given rows per split (ignore index 255, shards as in
    `write_split`), its manifest written last as the converters write it; returns the manifest
    as a job reads it back."""
    written = {
        name: write_split(root, name, rows, max_rows=max_rows, row_group_rows=row_group_rows)
        for name, rows in splits.items()
    }
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        dataset=dataset,
        class_names=tuple(class_names),
        palette=tuple(palette),
        ignore_index=255,
        splits=written,
        converter={"name": "test"},
    )
    write_manifest(root, manifest)
    return load_manifest(root)
