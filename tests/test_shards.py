"""The shard format: writing shards, the manifest written last, verified reading."""

import hashlib
import json
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.data.shard_writer import ShardWriter, prepare_output, write_manifest
from pipeline.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_SCHEMA,
    DatasetError,
    Manifest,
    ShardRow,
    SkippedSample,
    load_manifest,
    manifest_digest,
    read_shard_rows,
)
from pipeline.storage import StoragePath, list_names, read_bytes


def make_row(index: int) -> ShardRow:
    return ShardRow(f"sample-{index}", bytes([index]) * 10, bytes([255 - index]) * 5, 4, 3)


def write_dataset(root: Path, rows: int = 5, max_rows: int = 2) -> Manifest:
    prepare_output(root)
    with ShardWriter(root, "train", max_rows=max_rows, row_group_rows=1) as writer:
        for index in range(rows):
            writer.write(make_row(index))
        train = writer.close()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        dataset="tiny",
        class_names=("a", "b"),
        palette=((0, 0, 0), (255, 0, 0)),
        ignore_index=255,
        splits={"train": train},
        converter={"name": "test"},
        skipped=(SkippedSample("train", "x", "/raw/x.png", "truncated"),),
    )
    write_manifest(root, manifest)
    return manifest


def test_writer_rolls_to_a_new_shard_every_max_rows(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "set", rows=5, max_rows=2)
    shards = manifest.splits["train"].shards
    assert [shard.rows for shard in shards] == [2, 2, 1]
    assert [shard.path for shard in shards] == [
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
    ]
    assert manifest.splits["train"].rows == 5


def test_shards_follow_the_schema_and_keep_rows_in_order(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    manifest = load_manifest(root)
    uris = manifest.shard_uris("train")
    assert pq.read_schema(uris[0]).remove_metadata() == SHARD_SCHEMA
    rows = [row for uri in uris for row in read_shard_rows(uri)]
    assert rows == [make_row(index) for index in range(5)]


def test_manifest_records_size_and_sha256_of_each_shard(tmp_path: Path) -> None:
    root = tmp_path / "set"
    manifest = write_dataset(root)
    for shard in manifest.splits["train"].shards:
        data = (root / shard.path).read_bytes()
        assert shard.bytes == len(data)
        assert shard.sha256 == hashlib.sha256(data).hexdigest()


def test_no_temporary_files_remain_after_writing(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    assert sorted(path.name for path in (root / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    root = tmp_path / "set"
    written = write_dataset(root)
    loaded_from_folder = load_manifest(root)
    loaded_from_file = load_manifest(root / MANIFEST_NAME)
    assert loaded_from_folder == written
    assert loaded_from_file == written
    assert loaded_from_folder.root == str(root.resolve())
    assert loaded_from_folder.num_classes == 2
    assert "root" not in json.loads(written.to_json())


def test_shard_uris_are_absolute_paths(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    for uri in load_manifest(root).shard_uris("train"):
        assert Path(uri).is_absolute() and Path(uri).is_file()


def test_unknown_split_names_the_split_and_the_available_ones(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    with pytest.raises(DatasetError, match=r"no split 'val'.*available splits: train"):
        load_manifest(root).shard_uris("val")


def test_tampered_shard_fails_verification_naming_the_shard(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    shard = root / "train" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"part-00001\.parquet.*incomplete or modified"):
        load_manifest(root)


def test_truncated_shard_fails_verification_on_size(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    shard = root / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(DatasetError, match=r"part-00000\.parquet has \d+ bytes"):
        load_manifest(root)


def test_missing_shard_fails_verification(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    (root / "train" / "part-00002.parquet").unlink()
    with pytest.raises(DatasetError, match=r"part-00002\.parquet is missing"):
        load_manifest(root)


def test_verification_can_be_skipped(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    (root / "train" / "part-00002.parquet").unlink()
    assert load_manifest(root, verify=False).splits["train"].rows == 5


def test_folder_without_manifest_is_reported_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(DatasetError, match=r"incomplete.*prepare_data\.py"):
        load_manifest(root)


def test_missing_folder_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no prepared data set.*prepare_data\.py"):
        load_manifest(tmp_path / "nothing-here")


def test_interrupted_writer_leaves_no_unfinished_shard(tmp_path: Path) -> None:
    root = prepare_output(tmp_path / "set")
    with pytest.raises(RuntimeError), ShardWriter(root, "train", row_group_rows=1) as writer:
        writer.write(make_row(0))
        raise RuntimeError("conversion crashed")
    assert list((tmp_path / "set" / "train").iterdir()) == []
    assert not (tmp_path / "set" / MANIFEST_NAME).exists()


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    with pytest.raises(DatasetError, match=r"holds a prepared data set; pass --overwrite"):
        prepare_output(root)


def test_non_empty_output_without_manifest_is_refused_as_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"interrupted preparation"):
        prepare_output(root)


def test_overwrite_removes_the_old_content(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    prepare_output(root, overwrite=True)
    assert list(root.iterdir()) == []


def test_manifest_digest_is_the_sha256_of_the_manifest_file(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    expected = hashlib.sha256((root / MANIFEST_NAME).read_bytes()).hexdigest()
    assert manifest_digest(root) == expected
    assert manifest_digest(root / MANIFEST_NAME) == expected


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_dataset(root)
    document = json.loads((root / MANIFEST_NAME).read_text())
    document["format_version"] = FORMAT_VERSION + 1
    (root / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(DatasetError, match=r"format version .* is newer"):
        load_manifest(root)


def test_an_unfinished_shard_exists_only_under_a_hidden_temporary_name(tmp_path: Path) -> None:
    root = prepare_output(tmp_path / "set")
    with ShardWriter(root, "train", row_group_rows=1) as writer:
        writer.write(make_row(0))
        names_while_writing = [path.name for path in (tmp_path / "set" / "train").iterdir()]
        writer.close()
    assert len(names_while_writing) == 1
    assert names_while_writing[0].startswith(".part-00000.parquet.")
    assert [path.name for path in (tmp_path / "set" / "train").iterdir()] == ["part-00000.parquet"]


def object_store_stand_in(folder: Path) -> StoragePath:
    """`folder` seen through a filesystem that is not `LocalFileSystem`, so the writer treats it
    as an object store (no rename: files written in place) while the test can still look."""
    bucket = pafs.SubTreeFileSystem(str(folder), pafs.LocalFileSystem())
    return StoragePath(bucket, "set", scheme="s3")


def test_on_an_object_store_shards_are_written_in_place_under_their_final_names(
    tmp_path: Path,
) -> None:
    root = object_store_stand_in(tmp_path)
    with ShardWriter(root, "train", max_rows=2, row_group_rows=1) as writer:
        for index in range(3):
            writer.write(make_row(index))
        train = writer.close()
    assert list_names(root.child("train")) == ["part-00000.parquet", "part-00001.parquet"]
    for shard in train.shards:
        data = read_bytes(root.child(shard.path))
        assert shard.sha256 == hashlib.sha256(data).hexdigest()


def test_on_an_object_store_an_interrupted_shard_is_removed(tmp_path: Path) -> None:
    root = object_store_stand_in(tmp_path)
    with pytest.raises(RuntimeError), ShardWriter(root, "train", row_group_rows=1) as writer:
        writer.write(make_row(0))
        raise RuntimeError("conversion crashed")
    assert list_names(root.child("train")) == []
