"""Writing a shard set: a fresh output folder, split writers that roll shards, the manifest last.

The layout and the manifest are defined in `pipeline.data.shards`. A crash never leaves a set that
looks complete: shards follow `pipeline.storage`'s atomic-write rule (locally a hidden temporary
sibling, fsynced and renamed when whole; on object stores written in place), and the manifest
that lists them (with their sha256) is written after every shard.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_ROW_GROUP_ROWS,
    MANIFEST_NAME,
    SHARD_SCHEMA,
    SPLITS,
    DatasetError,
    Manifest,
    ShardInfo,
    ShardRow,
    SplitInfo,
)


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
    Each shard is streamed to a hidden temporary sibling and published (fsync + rename) when
    complete; object stores get it in place, where only the manifest written last makes it
    count. `close()` returns the split's `SplitInfo`; leaving the `with` block on an exception
    removes the unfinished shard. Use as a context manager.
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
        # The local temporary the open shard streams to; None on object stores (in place).
        self._temporary: Path | None = None
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
                self._temporary.unlink(missing_ok=True)
            elif self._target is not None:
                storage.delete_file(self._target)
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
        written = self._target.path
        if self._target.is_local:
            self._temporary = storage.local_temporary_sibling(Path(self._target.path))
            written = str(self._temporary)
        stream = self._target.filesystem.open_output_stream(written)
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
        assert self._target is not None
        self._writer.close()
        self._sink.close()
        if self._temporary is not None:
            storage.publish_local_file(self._temporary, Path(self._target.path))
        relative = f"{self.split}/{self._target.name}"
        self._finished.append(
            ShardInfo(relative, self._rows_in_shard, self._sink.size, self._sink.digest.hexdigest())
        )
        self._writer = self._sink = self._temporary = self._target = None
        self._rows_in_shard = 0
        self._bytes_in_shard = 0
