"""One way to address files: a local path or an s3:// / gs:// URI, through pyarrow.fs.

Object stores have no atomic rename, so `write_bytes_atomically` and the shard writer rename a
temporary file only on local filesystems and write in place on object stores; completeness is
then decided by the manifest, which is written last.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


def is_remote(uri: str | os.PathLike) -> bool:
    """True for object-store URIs (s3://, gs://), False for local paths."""
    return str(uri).startswith(REMOTE_SCHEMES)


@dataclass(frozen=True, eq=False)
class StoragePath:
    """A file or folder on some filesystem.

    `path` is what the filesystem understands (an absolute local path, or "bucket/key" for an
    object store); `uri` is what a user or Ray reads (the absolute local path, or "s3://bucket/key").
    """

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> StoragePath:
        """The path below this one; `parts` use "/" separators on every filesystem."""
        suffix = "/".join(part.strip("/") for part in parts)
        return StoragePath(
            self.filesystem,
            f"{self.path.rstrip('/')}/{suffix}",
            f"{self.uri.rstrip('/')}/{suffix}",
        )

    def parent(self) -> StoragePath:
        return StoragePath(
            self.filesystem,
            self.path.rstrip("/").rsplit("/", 1)[0],
            self.uri.rstrip("/").rsplit("/", 1)[0],
        )


def resolve(location: str | os.PathLike) -> StoragePath:
    """Turn a local path or an s3:// / gs:// URI into a `StoragePath`.

    Local paths are made absolute, so a URI handed to Ray workers means the same file everywhere.
    """
    text = str(location)
    if is_remote(text):
        filesystem, path = pafs.FileSystem.from_uri(text)
        return StoragePath(filesystem, path.rstrip("/"), text.rstrip("/"))
    absolute = str(Path(text).expanduser().resolve())
    return StoragePath(pafs.LocalFileSystem(), absolute, absolute)


def file_type(location: StoragePath) -> pafs.FileType:
    return location.filesystem.get_file_info(location.path).type


def exists(location: StoragePath) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def is_dir(location: StoragePath) -> bool:
    return file_type(location) == pafs.FileType.Directory


def file_size(location: StoragePath) -> int | None:
    """Size in bytes, or None when the file does not exist."""
    info = location.filesystem.get_file_info(location.path)
    if info.type != pafs.FileType.File:
        return None
    return int(info.size)


def list_names(location: StoragePath) -> list[str]:
    """Names (not paths) directly inside a folder; empty when the folder does not exist."""
    if not is_dir(location):
        return []
    selector = pafs.FileSelector(location.path, recursive=False)
    return sorted(info.base_name for info in location.filesystem.get_file_info(selector))


def make_dirs(location: StoragePath) -> None:
    location.filesystem.create_dir(location.path, recursive=True)


def delete_file(location: StoragePath) -> None:
    if file_type(location) == pafs.FileType.File:
        location.filesystem.delete_file(location.path)


def delete_dir(location: StoragePath) -> None:
    if is_dir(location):
        location.filesystem.delete_dir(location.path)


def read_bytes(location: StoragePath) -> bytes:
    with location.filesystem.open_input_stream(location.path) as stream:
        return stream.read()


def temporary_sibling(location: StoragePath) -> StoragePath:
    """A hidden name beside `location` for write-then-rename (readers skip dot files)."""
    return location.parent().child(f".{location.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes_atomically(location: StoragePath, data: bytes) -> None:
    """Write a whole file so that a crash never leaves a partial file under the final name.

    Locally: write a temporary sibling, then rename. On object stores a single PUT is already
    all-or-nothing, so the file is written in place.
    """
    make_dirs(location.parent())
    target = temporary_sibling(location) if location.is_local else location
    with location.filesystem.open_output_stream(target.path) as stream:
        stream.write(data)
    if target is not location:
        location.filesystem.move(target.path, location.path)
