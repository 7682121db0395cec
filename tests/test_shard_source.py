"""Ray Data's reader of prepared shards: planned from the manifest, blocks of rows, seeded order."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.datasets import write_shard_set

from pipeline.data.shard_source import (
    ShardBlock,
    ordered_blocks,
    read_blocks,
    read_shards,
    shard_blocks,
)
from pipeline.data.shards import DatasetError, Manifest, ShardRow, load_manifest

ROWS = 7


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    """A train split of 7 rows in two shards (4 + 3 rows) of 2-row row groups."""
    rows = [ShardRow(f"s{index}", b"image", b"mask", 1, 1) for index in range(ROWS)]
    return write_shard_set(
        tmp_path_factory.mktemp("shards"),
        {"train": rows},
        class_names=["a"],
        palette=[(0, 0, 0)],
        dataset="rows",
        max_rows=4,
        row_group_rows=2,
    )


def ids_of(blocks: list[ShardBlock]) -> list[str]:
    return [
        f"s{4 * ('part-00001' in b.uri) + b.first_row + k}" for b in blocks for k in range(b.rows)
    ]


def test_each_shard_is_cut_into_runs_of_the_block_rows(manifest):
    blocks = shard_blocks(manifest, "train", rows_per_block=3)
    assert [(Path(b.uri).name, b.first_row, b.rows) for b in blocks] == [
        ("part-00000.parquet", 0, 3),
        ("part-00000.parquet", 3, 1),
        ("part-00001.parquet", 0, 3),
    ]
    assert [b.rows for b in shard_blocks(manifest, "train", rows_per_block=None)] == [4, 3]


def test_a_block_reads_exactly_its_rows_across_row_groups(manifest):
    blocks = shard_blocks(manifest, "train", rows_per_block=3)
    tables = list(read_blocks(blocks, ["id"]))
    assert [table.column_names for table in tables] == [["id"]] * 3
    assert [row for table in tables for row in table.column("id").to_pylist()] == ids_of(blocks)
    assert ids_of(blocks) == [f"s{index}" for index in range(ROWS)]


def test_block_order_is_new_each_pass_and_reproducible_from_the_seed(manifest):
    blocks = shard_blocks(manifest, "train", rows_per_block=1)
    passes = [ordered_blocks(blocks, "blocks", seed=3, pass_index=k) for k in range(3)]
    assert all(sorted(ids_of(p)) == sorted(ids_of(blocks)) for p in passes)
    assert len({tuple(ids_of(p)) for p in passes}) == 3
    assert ordered_blocks(blocks, "blocks", seed=3, pass_index=1) == passes[1]
    assert ordered_blocks(blocks, "blocks", seed=4, pass_index=1) != passes[1]
    assert ordered_blocks(blocks, "shards", seed=3, pass_index=1) == blocks


def test_file_order_moves_whole_files_and_keeps_the_rows_inside_in_order(manifest):
    blocks = shard_blocks(manifest, "train", rows_per_block=1)
    orders = {tuple(ids_of(ordered_blocks(blocks, "files", 0, k))) for k in range(8)}
    first, second = [f"s{k}" for k in range(4)], [f"s{k}" for k in range(4, ROWS)]
    assert orders == {tuple(first + second), tuple(second + first)}


@pytest.mark.integration
def test_each_pass_reads_every_row_once_in_that_pass_block_order(ray_session, manifest):
    dataset = read_shards(manifest, "train", ["id"], rows_per_block=2, order="blocks", seed=7)
    dataset.context.execution_options.preserve_order = True
    blocks = shard_blocks(manifest, "train", rows_per_block=2)
    for pass_index in range(2):
        read = [row["id"] for row in dataset.take_all()]
        assert read == ids_of(ordered_blocks(blocks, "blocks", 7, pass_index)), pass_index


@pytest.mark.integration
def test_a_dataset_is_planned_without_opening_a_shard(ray_session, manifest, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(manifest.root, copy)
    loaded = load_manifest(copy)
    (copy / "train" / "part-00001.parquet").unlink()
    dataset = read_shards(loaded, "train", ["id"])
    assert dataset.count() == ROWS  # from the manifest's row counts
    with pytest.raises(Exception, match=r"part-00001\.parquet cannot be read"):
        dataset.take_all()


def test_a_shard_holding_other_rows_than_the_manifest_lists_is_named(manifest):
    shard = shard_blocks(manifest, "train", rows_per_block=None)[0]
    assert pq.read_metadata(shard.uri).num_rows == 4
    wrong = ShardBlock(shard.uri, 0, 5, shard_rows=5, bytes=shard.bytes)
    with pytest.raises(DatasetError, match=r"part-00000\.parquet has 4 rows, the manifest lists 5"):
        list(read_blocks([wrong], ["id"]))


def test_a_column_the_shards_do_not_have_is_refused(manifest):
    with pytest.raises(ValueError, match=r"no column \['label'\]"):
        read_shards(manifest, "train", ["id", "label"])
