"""The data set a config trains on: its `data.path`, or the built-in synthetic set.

The synthetic set is generated on first use into
`<home>/data/synthetic-<hash of its options and the generator version>`, so changing an option
or the scenes makes a new set and never mixes two.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.config.schema import DataSection, config_to_dict
from pipeline.data.shards import MANIFEST_NAME, Manifest, load_manifest
from pipeline.storage import apcnet_home


@dataclass(frozen=True)
class TrainingData:
    """A data set ready to train on: where it is and its manifest, its shards verified once."""

    path: str
    manifest: Manifest

    @property
    def manifest_file(self) -> str:
        """The manifest's own path (`path` may name the folder or the manifest)."""
        if self.path.endswith(".json"):
            return self.path
        return self.path.rstrip("/") + "/" + MANIFEST_NAME


def data_set_path(data: DataSection) -> str:
    """The shard folder (or manifest) to train on; the synthetic set is written on first use."""
    if data.path is not None:
        return data.path
    from pipeline.data.formats.synthetic import GENERATOR_VERSION, write_synthetic

    options = config_to_dict(data.synthetic)
    key = {**options, "generator_version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = apcnet_home() / "data" / f"synthetic-{digest}"
    if not (folder / MANIFEST_NAME).is_file():
        write_synthetic(folder, overwrite=True, **options)
    return str(folder)


def load_training_data(data: DataSection) -> TrainingData:
    """The data set of `data`, with its manifest loaded and every shard's sha256 checked.

    Hashing reads every byte of the set, so a training start does it once, here, and hands
    the result on (also to every Tune trial).
    """
    path = data_set_path(data)
    return TrainingData(path, load_manifest(path, verify=True))
