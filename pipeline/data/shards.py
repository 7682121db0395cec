"""The shard format: Parquet files of samples plus a manifest.json written last.

A prepared data set is a folder (local, NFS, s3:// or gs://):

    <root>/manifest.json
    <root>/<split>/part-00000.parquet, part-00001.parquet, ...

One Parquet row per sample (`SHARD_SCHEMA`). The manifest lists every shard with its row
count, byte size and sha256; a shard set is complete exactly when its manifest exists and the
listed hashes match, because object stores have no atomic rename. This module defines the
format and reads it; `pipeline.data.shard_writer` writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError

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


class DatasetError(UserError, ValueError):
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


def read_shard_rows(uri: str) -> list[ShardRow]:
    """All rows of one shard file (for tests and small tools; training reads via Ray Data)."""
    location = storage.resolve(uri)
    with location.filesystem.open_input_file(location.path) as stream:
        table = pq.read_table(stream, schema=SHARD_SCHEMA)
    return [ShardRow(**row) for row in table.to_pylist()]
