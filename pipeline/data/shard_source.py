"""Ray Data's reader of prepared shards, planned from the manifest alone.

The manifest lists every shard with its rows and bytes and was verified when the data set was
loaded, so planning a read needs no file: `read_shards` builds a Dataset without touching
storage. Ray's Parquet readers learn the same facts from the files, and Ray 2.60's V1 reader
always samples footers in a remote task while the Dataset is built (on a fresh cluster the
driver waited about 1.3 s for that task's new worker process), its V2 reader starts a pool of
footer-reading actors for every execution (every epoch and validation pass).

A read is cut into blocks of `rows_per_block` consecutive rows of one shard (or whole shards);
each read task reads its blocks' row groups and yields one Arrow table per block (object
stores through `pipeline.storage`, whose S3 client retries transient errors). The order
of blocks can change with every pass over the Dataset (`ReadOrder`), seeded, so that
training sees its data in a new, reproducible order each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data import DataContext, RandomSeedConfig
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline import storage
from pipeline.data.shards import SHARD_SCHEMA, DatasetError, Manifest

# "shards": the manifest's order, every pass. "files": the shard files in a new order every
# pass, blocks in file order within them. "blocks": every block in a new order every pass.
ReadOrder = Literal["shards", "files", "blocks"]


# Checked against Ray 2.60.0. Ray Data has no public "which pass is this" call. Its random ops
# vary per execution through `RandomSeedConfig(reseed_after_execution=True)` (DeveloperAPI,
# exported as `ray.data.RandomSeedConfig`), whose `get_seed_tuple(data_context=...)` returns the
# context's execution index as `.execution_idx`. That relies on: Ray Data installing the
# executing dataset's DataContext as the current one inside each task, handing it to
# `Datasource.get_read_tasks` when it plans an execution, and raising its execution index by
# one after every successful execution (ExecutionIdxUpdateCallback).
# tests/test_ray_internals.py fails, naming this function, when either stops holding.
_PASS_COUNTER = RandomSeedConfig(seed=0, reseed_after_execution=True)


def completed_passes(context: DataContext) -> int:
    """How many times the dataset running under `context` was executed before (0, 1, ...).

    Inside a Ray Data task pass `DataContext.get_current()`: the executing dataset's context.
    """
    return int(_PASS_COUNTER.get_seed_tuple(data_context=context).execution_idx)


@dataclass(frozen=True)
class ShardBlock:
    """Rows [first_row, first_row + rows) of one shard file."""

    uri: str
    first_row: int
    rows: int
    shard_rows: int
    bytes: int  # the shard's bytes pro rata: encoded images are about their size in memory


def shard_blocks(manifest: Manifest, split: str, rows_per_block: int | None) -> list[ShardBlock]:
    """The split's rows as blocks, in shard order: each shard cut into runs of
    `rows_per_block` rows (the last run of a shard may be shorter), or whole with None."""
    if rows_per_block is not None and rows_per_block < 1:
        raise ValueError(f"rows_per_block must be None or >= 1, got {rows_per_block}")
    blocks = []
    for uri, shard in zip(manifest.shard_uris(split), manifest.splits[split].shards, strict=True):
        step = rows_per_block or max(shard.rows, 1)
        for first in range(0, shard.rows, step):
            rows = min(step, shard.rows - first)
            share = shard.bytes * rows // shard.rows
            blocks.append(ShardBlock(uri, first, rows, shard.rows, share))
    return blocks


def ordered_blocks(
    blocks: Sequence[ShardBlock], order: ReadOrder, seed: int, pass_index: int
) -> list[ShardBlock]:
    """`blocks` in the order of pass `pass_index`: a pure function of (order, seed, pass)."""
    if order == "shards":
        return list(blocks)
    rng = np.random.default_rng([seed, pass_index])
    if order == "blocks":
        return [blocks[index] for index in rng.permutation(len(blocks))]
    files = list(dict.fromkeys(block.uri for block in blocks))
    rank = {files[index]: position for position, index in enumerate(rng.permutation(len(files)))}
    return sorted(blocks, key=lambda block: rank[block.uri])  # stable: file order kept inside


class ShardDatasource(Datasource):
    """Blocks of a prepared split, `columns` only, in `order` (see `read_shards`)."""

    def __init__(
        self,
        blocks: Sequence[ShardBlock],
        columns: Sequence[str],
        order: ReadOrder = "shards",
        seed: int = 0,
    ) -> None:
        super().__init__()
        unknown = [name for name in columns if SHARD_SCHEMA.get_field_index(name) < 0]
        if unknown:
            raise ValueError(f"shards have no column {unknown}; they have {SHARD_SCHEMA.names}")
        self._blocks = tuple(blocks)
        self._columns = tuple(columns)
        self._order = order
        self._seed = seed

    def get_name(self) -> str:
        return "ReadShards"

    def estimate_inmemory_data_size(self) -> int:
        return sum(block.bytes for block in self._blocks)

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        # Ray Data plans every execution anew, handing over the executing dataset's context.
        pass_index = completed_passes(data_context) if data_context is not None else 0
        blocks = ordered_blocks(self._blocks, self._order, self._seed, pass_index)
        schema = pa.schema([SHARD_SCHEMA.field(name) for name in self._columns])
        tasks = []
        for group in np.array_split(np.arange(len(blocks)), max(1, min(parallelism, len(blocks)))):
            task_blocks = tuple(blocks[index] for index in group)
            metadata = BlockMetadata(
                num_rows=sum(block.rows for block in task_blocks),
                size_bytes=sum(block.bytes for block in task_blocks),
                input_files=tuple(dict.fromkeys(block.uri for block in task_blocks)),
                exec_stats=None,
            )
            tasks.append(
                ReadTask(
                    partial(read_blocks, task_blocks, self._columns),
                    metadata,
                    schema=schema,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def read_blocks(blocks: Sequence[ShardBlock], columns: Sequence[str]) -> Iterator[pa.Table]:
    """One table per block, `columns` only; the row groups a block needs are read once per
    file. Raises DatasetError naming a shard that does not hold the rows the manifest lists."""
    opened: dict[str, pq.ParquetFile] = {}
    for block in blocks:
        if block.uri not in opened:
            opened.clear()  # a task's blocks of one file come together; keep one open
            opened[block.uri] = _open_shard(block)
        yield _read_rows(opened[block.uri], block, columns)


def _open_shard(block: ShardBlock) -> pq.ParquetFile:
    location = storage.resolve(block.uri)
    try:
        shard = pq.ParquetFile(location.filesystem.open_input_file(location.path))
    except (OSError, pa.ArrowInvalid) as error:
        raise DatasetError(
            f"shard {block.uri} cannot be read ({error}); check that the storage is reachable, "
            "or prepare the data set again with jobs/prepare_data.py --overwrite"
        ) from error
    if shard.metadata.num_rows != block.shard_rows:
        raise DatasetError(
            f"shard {block.uri} has {shard.metadata.num_rows} rows, the manifest lists "
            f"{block.shard_rows}: the data set was modified; prepare it again with "
            "jobs/prepare_data.py --overwrite"
        )
    return shard


def _read_rows(shard: pq.ParquetFile, block: ShardBlock, columns: Sequence[str]) -> pa.Table:
    groups, group_start, skip = [], 0, 0
    stop = block.first_row + block.rows
    for index in range(shard.metadata.num_row_groups):
        group_stop = group_start + shard.metadata.row_group(index).num_rows
        if group_stop > block.first_row and group_start < stop:
            if not groups:
                skip = block.first_row - group_start
            groups.append(index)
        group_start = group_stop
    table = shard.read_row_groups(groups, columns=list(columns))
    return table.slice(skip, block.rows)


def read_shards(
    manifest: Manifest,
    split: str,
    columns: Sequence[str],
    *,
    rows_per_block: int | None = None,
    order: ReadOrder = "shards",
    seed: int = 0,
) -> ray.data.Dataset:
    """A split's rows as a Ray Dataset of `columns`, in blocks of `rows_per_block` rows of one
    shard (None: a block per shard), each read by its own task where Ray Data's parallelism
    allows; `order` and `seed` say how the blocks are ordered in each pass over the Dataset.
    Nothing is read until the Dataset executes."""
    blocks = shard_blocks(manifest, split, rows_per_block)
    source = ShardDatasource(blocks, columns, order, seed)
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(blocks)))
