"""Turn any converter's `DatasetPlan` into Parquet shards and a manifest written last."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

from tqdm import tqdm

from pipeline.data.formats.common import IGNORE_INDEX, DatasetPlan, SampleSpec, find_duplicates
from pipeline.data.formats.validation import SampleResult, convert_sample
from pipeline.data.shard_writer import ShardWriter, prepare_output, write_manifest
from pipeline.data.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    FORMAT_VERSION,
    DatasetError,
    Manifest,
    SkippedSample,
    SplitInfo,
)

ON_ERROR_CHOICES = ("fail", "skip")
_TASKS_PER_WORKER = 4  # in flight per worker: enough to keep them busy, bounded in memory


@dataclass(frozen=True)
class WriteOptions:
    workers: int = os.cpu_count() or 1
    on_error: str = "fail"  # "fail": stop at the first bad sample; "skip": record and go on
    overwrite: bool = False
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    progress: bool = True


def write_plan(plan: DatasetPlan, output: str, options: WriteOptions) -> Manifest:
    """Convert every sample of `plan` into shards under `output`; return the written manifest.

    Bad samples stop the conversion with a DatasetError naming the file (no manifest is
    written), or with on_error="skip" are left out and listed in the manifest's `skipped`.
    """
    if options.on_error not in ON_ERROR_CHOICES:
        raise DatasetError(f"--on-error {options.on_error!r}: use one of {ON_ERROR_CHOICES}")
    for name, split in plan.splits.items():
        if not split.samples:
            raise DatasetError(f"split {name} is empty: no samples found in {split.origin}")
    plan, duplicates = find_duplicates(plan)
    if duplicates and options.on_error == "fail":
        first = duplicates[0]
        raise DatasetError(f"{first.file}: {first.reason}; {_HOW_TO_PROCEED}")
    root = prepare_output(output, overwrite=options.overwrite)
    skipped = list(duplicates)
    splits: dict[str, SplitInfo] = {}
    with _pool(options.workers) as pool:
        for name, split in plan.splits.items():
            splits[name], split_skipped = _write_split(name, split.samples, root, pool, options)
            if splits[name].rows == 0:
                raise DatasetError(
                    f"split {name} is empty: every sample from {split.origin} was skipped "
                    f"({len(split_skipped)} problems, first: {split_skipped[0].file}: "
                    f"{split_skipped[0].reason})"
                )
            skipped.extend(split_skipped)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        dataset=plan.dataset,
        class_names=plan.class_names,
        palette=plan.palette,
        ignore_index=IGNORE_INDEX,
        splits=splits,
        converter=dict(plan.converter),
        skipped=tuple(skipped),
        root=root.uri,
    )
    write_manifest(root.uri, manifest)
    return manifest


_HOW_TO_PROCEED = "fix or remove it, or rerun with --on-error skip to leave such samples out"


def _write_split(
    name: str,
    samples: tuple[SampleSpec, ...],
    root,
    pool: ProcessPoolExecutor | None,
    options: WriteOptions,
) -> tuple[SplitInfo, list[SkippedSample]]:
    skipped: list[SkippedSample] = []
    progress = tqdm(
        total=len(samples), desc=f"{name}", unit="img", disable=not options.progress, leave=True
    )
    with (
        progress,
        ShardWriter(root, name, max_rows=options.max_rows, max_bytes=options.max_bytes) as writer,
    ):
        for result in _convert_in_order(samples, pool, options.workers):
            progress.update(1)
            if result.row is not None:
                writer.write(result.row)
                continue
            if options.on_error == "fail":
                raise DatasetError(
                    f"{result.file}: {result.reason} (split {name}, sample {result.id}); "
                    f"{_HOW_TO_PROCEED}"
                )
            skipped.append(SkippedSample(name, result.id, result.file, result.reason))
            progress.set_postfix(skipped=len(skipped))
        return writer.close(), skipped


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


def _pool(workers: int) -> ProcessPoolExecutor | _NoPool:
    """A process pool for decoding, or none for one worker (no start-up cost, easy debugging).

    "spawn" rather than fork: the parent may hold pyarrow/tqdm threads, and forking a
    threaded process can deadlock the child.
    """
    if workers <= 1:
        return _NoPool()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _convert_in_order(
    samples: Iterable[SampleSpec], pool: ProcessPoolExecutor | None, workers: int
) -> Iterator[SampleResult]:
    """Results in input order, with at most a few tasks per worker in flight."""
    if pool is None:
        yield from map(convert_sample, samples)
        return
    pending = iter(samples)
    window: deque[Future[SampleResult]] = deque(
        pool.submit(convert_sample, spec) for spec in islice(pending, workers * _TASKS_PER_WORKER)
    )
    try:
        while window:
            result = window.popleft().result()
            upcoming = next(pending, None)
            if upcoming is not None:
                window.append(pool.submit(convert_sample, upcoming))
            yield result
    finally:
        for future in window:
            future.cancel()
