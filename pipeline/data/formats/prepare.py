"""Pick the converter for a format and write its shards: what jobs/prepare_data.py calls."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.data.formats.ade20k import plan_ade20k
from pipeline.data.formats.cityscapes import plan_cityscapes
from pipeline.data.formats.common import DatasetPlan
from pipeline.data.formats.folder import plan_folder
from pipeline.data.formats.pascal_context import plan_pascal_context
from pipeline.data.formats.voc import plan_voc
from pipeline.data.formats.writing import WriteOptions, write_plan
from pipeline.data.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DatasetError, Manifest

FORMATS = ("voc", "ade20k", "pascal_context", "cityscapes", "folder", "synthetic")


@dataclass(frozen=True)
class PrepareOptions:
    format: str
    output: str  # local folder or s3:// / gs:// URI
    source: str | None = None  # the raw data set folder (local or mounted); all but synthetic
    sbd: str | None = None  # voc: SBD folder, adds train_aug
    num_classes: int | None = None  # pascal_context: 59 or 60; folder: without classes.txt
    val_fraction: float | None = None  # folder without splits/
    seed: int = 0  # folder split, synthetic scenes
    include_test: bool = False  # cityscapes: also write the (unlabelled) test split
    num_train: int = 1000  # synthetic
    num_val: int = 200  # synthetic
    size: int = 128  # synthetic image side in pixels
    workers: int = os.cpu_count() or 1
    on_error: str = "fail"
    overwrite: bool = False
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    progress: bool = True


def plan_dataset(options: PrepareOptions) -> DatasetPlan:
    """The converter's plan for a raw format (every format but synthetic)."""
    if options.source is None:
        raise DatasetError(f"--format {options.format} needs --source (the raw data set folder)")
    source = options.source
    if options.format == "voc":
        return plan_voc(source, sbd=options.sbd)
    if options.format == "ade20k":
        return plan_ade20k(source)
    if options.format == "pascal_context":
        return plan_pascal_context(source, num_classes=options.num_classes or 59)
    if options.format == "cityscapes":
        return plan_cityscapes(source, include_test=options.include_test)
    if options.format == "folder":
        return plan_folder(
            source,
            num_classes=options.num_classes,
            val_fraction=options.val_fraction,
            seed=options.seed,
        )
    raise DatasetError(f"unknown --format {options.format!r}; use one of {', '.join(FORMATS)}")


def prepare_dataset(options: PrepareOptions) -> Manifest:
    """Convert a raw data set (or generate the synthetic one) into shards; return the manifest."""
    if options.format == "synthetic":
        from pipeline.data.formats.synthetic import write_synthetic

        return write_synthetic(
            options.output,
            num_train=options.num_train,
            num_val=options.num_val,
            size=options.size,
            seed=options.seed,
            overwrite=options.overwrite,
            max_rows=options.max_rows,
        )
    plan = plan_dataset(options)
    write_options = WriteOptions(
        workers=options.workers,
        on_error=options.on_error,
        overwrite=options.overwrite,
        max_rows=options.max_rows,
        max_bytes=options.max_bytes,
        progress=options.progress,
    )
    return write_plan(plan, options.output, write_options)
