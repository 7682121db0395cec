"""The shard format: Parquet files of samples plus a manifest.json written last.

A prepared data set is a folder (local, NFS, s3:// or gs://):

    <root>/manifest.json
    <root>/<split>/part-00000.parquet, part-00001.parquet, ...

One Parquet row per sample (`SHARD_SCHEMA`). The manifest lists every shard with its row
count, byte size and sha256; a shard set is complete exactly when its manifest exists and the
listed hashes match, because object stores have no atomic rename.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "train_aug", "test")

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("mask", pa.binary(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
    ]
)

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_ROW_GROUP_ROWS = 64
_HASH_CHUNK = 8 * 1024 * 1024


class DatasetError(ValueError):
    """A data set (raw or prepared) is missing, incomplete, malformed or inconsistent."""


@dataclass(frozen=True)
class ShardRow:
    """One sample as stored: original image file bytes and a single-channel PNG mask."""

    id: str
    image: bytes
    mask: bytes
    height: int
    width: int


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the data set folder, e.g. "train/part-00000.parquet"
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)


@dataclass(frozen=True)
class SkippedSample:
    """A raw sample left out under `--on-error skip`, with the file at fault and why."""

    split: str
    id: str
    file: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    format_version: int
    dataset: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    splits: dict[str, SplitInfo]
    converter: dict  # converter name + options, as given to the job
    skipped: tuple[SkippedSample, ...] = ()
    root: str = field(default="", compare=False)  # folder path/URI; not serialised

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shard_uris(self, split: str) -> list[str]:
        """Full paths/URIs of the split's shards, in order."""
        if split not in self.splits:
            raise DatasetError(
                f"data set {self.root or self.dataset!r} has no split {split!r}; "
                f"available splits: {', '.join(sorted(self.splits)) or 'none'}"
            )
        base = self.root.rstrip("/")
        return [f"{base}/{shard.path}" for shard in self.splits[split].shards]

    def to_json(self) -> str:
        document = {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "palette": [list(color) for color in self.palette],
            "ignore_index": self.ignore_index,
            "splits": {
                name: {
                    "rows": info.rows,
                    "shards": [
                        {"path": s.path, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256}
                        for s in info.shards
                    ],
                }
                for name, info in self.splits.items()
            },
            "converter": self.converter,
            "skipped": [
                {"split": s.split, "id": s.id, "file": s.file, "reason": s.reason}
                for s in self.skipped
            ],
        }
        return json.dumps(document, indent=2, sort_keys=False) + "\n"

    @staticmethod
    def from_json(text: str, root: str = "", source: str = MANIFEST_NAME) -> Manifest:
        """Parse manifest text; `source` names the file in error messages."""
        try:
            document = json.loads(text)
            version = int(document["format_version"])
            if version > FORMAT_VERSION:
                raise DatasetError(
                    f"{source}: format version {version} is newer than this code understands "
                    f"({FORMAT_VERSION}); update the project or prepare the data set again"
                )
            manifest = Manifest(
                format_version=version,
                dataset=str(document["dataset"]),
                class_names=tuple(str(name) for name in document["class_names"]),
                palette=tuple(tuple(int(c) for c in color) for color in document["palette"]),
                ignore_index=int(document["ignore_index"]),
                splits={
                    name: SplitInfo(
                        tuple(
                            ShardInfo(str(s["path"]), int(s["rows"]), int(s["bytes"]), s["sha256"])
                            for s in info["shards"]
                        )
                    )
                    for name, info in document["splits"].items()
                },
                converter=dict(document.get("converter", {})),
                skipped=tuple(SkippedSample(**s) for s in document.get("skipped", [])),
                root=root,
            )
        except DatasetError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(
                f"{source} is not a valid manifest ({error!r}); prepare the data set again "
                "with jobs/prepare_data.py --overwrite"
            ) from error
        if len(manifest.palette) != manifest.num_classes:
            raise DatasetError(
                f"{source}: {manifest.num_classes} class names but {len(manifest.palette)} "
                "palette colours; prepare the data set again"
            )
        return manifest


def _manifest_location(path: str | os.PathLike) -> storage.StoragePath:
    location = storage.resolve(path)
    if location.name == MANIFEST_NAME and not storage.is_dir(location):
        return location
    return location.child(MANIFEST_NAME)


def load_manifest(path: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read a prepared data set's manifest; `path` is its folder or its manifest.json.

    With `verify`, every listed shard must exist with the listed size and sha256.
    Raises DatasetError naming what is missing or modified and how to fix it.
    """
    manifest_file = _manifest_location(path)
    root = manifest_file.parent()
    if not storage.exists(manifest_file):
        if storage.is_dir(root):
            raise DatasetError(
                f"{root.uri} has no {MANIFEST_NAME}: the data set is incomplete (its preparation "
                "was interrupted or failed); prepare it again with "
                f"`python jobs/prepare_data.py --format ... --output {root.uri} --overwrite`"
            )
        raise DatasetError(
            f"no prepared data set at {root.uri}; prepare one with "
            f"`python jobs/prepare_data.py --format ... --output {root.uri}`"
        )
    text = storage.read_bytes(manifest_file).decode("utf-8")
    manifest = Manifest.from_json(text, root=root.uri, source=manifest_file.uri)
    if verify:
        for info in manifest.splits.values():
            for shard in info.shards:
                _verify_shard(root, shard)
    return manifest


def _verify_shard(root: storage.StoragePath, shard: ShardInfo) -> None:
    location = root.child(shard.path)
    size = storage.file_size(location)
    problem = None
    if size is None:
        problem = "is missing"
    elif size != shard.bytes:
        problem = f"has {size} bytes, the manifest lists {shard.bytes}"
    else:
        digest = hashlib.sha256()
        with location.filesystem.open_input_stream(location.path) as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != shard.sha256:
            problem = "does not match the sha256 in the manifest"
    if problem:
        raise DatasetError(
            f"shard {location.uri} {problem}: the data set is incomplete or modified; "
            "prepare it again with jobs/prepare_data.py --overwrite"
        )


def manifest_digest(path: str | os.PathLike) -> str:
    """sha256 of the manifest.json bytes: one tag identifying the exact prepared data."""
    manifest_file = _manifest_location(path)
    if not storage.exists(manifest_file):
        raise DatasetError(f"no {MANIFEST_NAME} at {manifest_file.uri}; prepare the data set first")
    return hashlib.sha256(storage.read_bytes(manifest_file)).hexdigest()


def prepare_output(output: str | os.PathLike, overwrite: bool = False) -> storage.StoragePath:
    """Make `output` ready for a fresh shard set and return it.

    An existing non-empty folder is refused unless `overwrite`; then the manifest is deleted
    first, so a half-removed old set can never look complete, and the rest after it.
    """
    root = storage.resolve(output)
    kind = storage.file_type(root)
    if kind == storage.pafs.FileType.File:
        raise DatasetError(f"output {root.uri} is a file; give a folder for the prepared data set")
    names = storage.list_names(root)
    if names:
        if not overwrite:
            state = (
                "holds a prepared data set"
                if MANIFEST_NAME in names
                else "is not empty (perhaps an interrupted preparation)"
            )
            raise DatasetError(
                f"output {root.uri} {state}; pass --overwrite (overwrite=True) to replace it, "
                "or choose another folder"
            )
        storage.delete_file(root.child(MANIFEST_NAME))
        for name in names:
            child = root.child(name)
            if storage.is_dir(child):
                storage.delete_dir(child)
            else:
                storage.delete_file(child)
    storage.make_dirs(root)
    return root


def write_manifest(output: str | os.PathLike, manifest: Manifest) -> str:
    """Write manifest.json into `output`, last (temp + rename locally). Returns its path/URI."""
    location = storage.resolve(output).child(MANIFEST_NAME)
    storage.write_bytes_atomically(location, manifest.to_json().encode("utf-8"))
    return location.uri


class _HashingSink(io.RawIOBase):
    """A write-only stream that hashes and counts bytes on their way to the real stream."""

    def __init__(self, inner: pa.NativeFile) -> None:
        super().__init__()
        self._inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self.digest.update(chunk)
        self.size += len(chunk)
        self._inner.write(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class ShardWriter:
    """Write one split's samples into `<root>/<split>/part-NNNNN.parquet` files.

    Rolls to a new shard after `max_rows` rows or about `max_bytes` bytes of sample data.
    Each shard is written under a hidden temporary name and renamed when complete (locally;
    object stores get it in place). `close()` returns the split's `SplitInfo`; leaving the
    `with` block on an exception removes the unfinished shard. Use as a context manager.
    """

    def __init__(
        self,
        root: str | os.PathLike | storage.StoragePath,
        split: str,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    ) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if max_rows < 1 or max_bytes < 1 or row_group_rows < 1:
            raise ValueError("max_rows, max_bytes and row_group_rows must be positive")
        self.root = root if isinstance(root, storage.StoragePath) else storage.resolve(root)
        self.split = split
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.row_group_rows = row_group_rows
        self._finished: list[ShardInfo] = []
        self._pending: list[ShardRow] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: _HashingSink | None = None
        self._target: storage.StoragePath | None = None
        self._temporary: storage.StoragePath | None = None
        self._rows_in_shard = 0
        self._bytes_in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error_type is not None:
            self.abort()

    def write(self, row: ShardRow) -> None:
        self._pending.append(row)
        self._rows_in_shard += 1
        self._bytes_in_shard += len(row.image) + len(row.mask) + len(row.id) + 8
        if len(self._pending) >= self.row_group_rows:
            self._flush_row_group()
        if self._rows_in_shard >= self.max_rows or self._bytes_in_shard >= self.max_bytes:
            self._finish_shard()

    def close(self) -> SplitInfo:
        """Finish the last shard and return the split's shards."""
        if self._rows_in_shard:
            self._finish_shard()
        return SplitInfo(tuple(self._finished))

    def abort(self) -> None:
        """Drop the unfinished shard (finished shards stay; no manifest lists them)."""
        self._pending.clear()
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._sink is not None:
                self._sink.close()
            if self._temporary is not None:
                storage.delete_file(self._temporary)
            self._writer = self._sink = self._temporary = self._target = None

    def _flush_row_group(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self._open_shard()
        assert self._writer is not None
        columns = {
            "id": [row.id for row in self._pending],
            "image": [row.image for row in self._pending],
            "mask": [row.mask for row in self._pending],
            "height": [row.height for row in self._pending],
            "width": [row.width for row in self._pending],
        }
        self._writer.write_table(pa.table(columns, schema=SHARD_SCHEMA))
        self._pending.clear()

    def _open_shard(self) -> None:
        relative = f"{self.split}/part-{len(self._finished):05d}.parquet"
        self._target = self.root.child(relative)
        storage.make_dirs(self._target.parent())
        local = self._target.is_local
        self._temporary = storage.temporary_sibling(self._target) if local else self._target
        stream = self._target.filesystem.open_output_stream(self._temporary.path)
        self._sink = _HashingSink(stream)
        # Images are already compressed; Parquet compression would only cost time.
        self._writer = pq.ParquetWriter(
            self._sink,
            SHARD_SCHEMA,
            compression={"image": "none", "mask": "none", "id": "snappy"},
            use_dictionary=["id"],
        )

    def _finish_shard(self) -> None:
        self._flush_row_group()
        assert self._writer is not None and self._sink is not None
        assert self._target is not None and self._temporary is not None
        self._writer.close()
        self._sink.close()
        if self._temporary is not self._target:
            self._target.filesystem.move(self._temporary.path, self._target.path)
        relative = f"{self.split}/{self._target.name}"
        self._finished.append(
            ShardInfo(relative, self._rows_in_shard, self._sink.size, self._sink.digest.hexdigest())
        )
        self._writer = self._sink = self._temporary = self._target = None
        self._rows_in_shard = 0
        self._bytes_in_shard = 0


def read_shard_rows(uri: str) -> list[ShardRow]:
    """All rows of one shard file (for tests and small tools; training reads via Ray Data)."""
    location = storage.resolve(uri)
    with location.filesystem.open_input_file(location.path) as stream:
        table = pq.read_table(stream, schema=SHARD_SCHEMA)
    return [ShardRow(**row) for row in table.to_pylist()]
