"""A training run's folder `<storage>/<run name>/`: its name, its records, its checkpoints.

Beside the checkpoints that Ray Train writes there (`epoch_NNNN/checkpoint.pt`, the
`checkpointing.num_to_keep` best by val_miou plus the latest, recorded in Ray's snapshot
file), the run keeps two records of its own:
- `config.yaml`: the resolved config the run was started with (written once, at the start);
- `COMPLETE.json`: written last, when the run has finished: its summary. A run is complete
  exactly when this file exists.
Both are written atomically (`pipeline.storage`), so a crash never leaves a half file. After
`COMPLETE.json`, `jobs/train.py` adds `preview.png`, a picture of a few validation images and
their predictions (`pipeline.evaluate.preview`); it says nothing about completeness. The
storage may be a local (or shared) folder or an object store (s3://, gs://): locations are
strings, absolute local paths or URIs.

The checkpoint lookups read Ray's record through `ray.train.Result.from_path`, so they agree
with what Ray restores on resume (the latest) and what it kept (the best).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from ray.train import Result

from pipeline import storage
from pipeline.config.schema import ExperimentConfig, config_from_dict
from pipeline.config.typed import load_yaml
from pipeline.storage import CHECKPOINT_FILE, apcnet_home
from pipeline.train.state import Progress, read_progress

COMPLETE_MARKER = "COMPLETE.json"
CONFIG_FILE = "config.yaml"
PREVIEW_FILE = "preview.png"
RUNS_FOLDER = "runs"
SCORE_METRIC = "val_miou"


def default_run_name(config_path: str | Path | None, now: datetime | None = None) -> str:
    """`<config stem>-<YYYYmmdd-HHMMSS>`; the stem is "synthetic" for the embedded default."""
    stem = Path(config_path).stem if config_path is not None else "synthetic"
    return f"{stem}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def default_storage_path() -> Path:
    """Where run folders go when nothing else is named: `<home>/runs`."""
    return apcnet_home() / RUNS_FOLDER


def storage_root(config: ExperimentConfig, storage_path: str | Path | None = None) -> str:
    """The folder run folders go in, as an absolute local path or an s3:// / gs:// URI: the
    argument, else the config's `checkpointing.storage_path`, else `<home>/runs`."""
    chosen = storage_path or config.checkpointing.storage_path or default_storage_path()
    return storage.resolve(chosen).uri


def run_folder(run_name: str, storage_path: str | Path | None = None) -> str:
    """`<storage>/<run name>` (a local path or a URI), with the default storage when
    `storage_path` is None."""
    return storage.join(storage_path or default_storage_path(), run_name)


def stored_config(run_name: str, storage_path: str | Path) -> ExperimentConfig | None:
    """The resolved config a run was started with, or None for a run that never started."""
    location = storage.join(run_folder(run_name, storage_path), CONFIG_FILE)
    text = storage.read_text(location)
    if text is None:
        return None
    return config_from_dict(load_yaml(text), source=location)


def write_config_once(folder: str, config_yaml: str) -> None:
    """Record the config a run starts with; a resumed run keeps its first record."""
    location = storage.resolve(folder).child(CONFIG_FILE)
    if not storage.exists(location):
        storage.write_text_atomically(location, config_yaml)


def completed_summary(run_name: str, storage_path: str | Path) -> dict[str, Any] | None:
    """The completion record of a finished run, or None when it has not finished."""
    text = storage.read_text(storage.join(run_folder(run_name, storage_path), COMPLETE_MARKER))
    return json.loads(text) if text is not None else None


def write_complete_marker(folder: str, summary: dict[str, Any]) -> None:
    """Mark the run in `folder` complete, with its summary (JSON). Written last."""
    location = storage.resolve(folder).child(COMPLETE_MARKER)
    storage.write_text_atomically(location, json.dumps(summary, indent=2) + "\n")


def best_checkpoint(run_name: str, storage_path: str | Path | None = None) -> str:
    """The `checkpoint.pt` (local path or URI) of the run's checkpoint with the highest val_miou.

    Raises FileNotFoundError naming the run folder when the run has no validated checkpoint.
    """
    folder, result = _result(run_name, storage_path)
    scored = [
        (metrics.get(SCORE_METRIC), checkpoint)
        for checkpoint, metrics in result.best_checkpoints or []
        if is_reported_number(metrics.get(SCORE_METRIC))
    ]
    if not scored:
        raise FileNotFoundError(
            f"run {run_name!r} in {folder.uri} has no checkpoint with {SCORE_METRIC}; train it "
            f"(python jobs/train.py --name {run_name}) until a validation epoch has run"
        )
    _, checkpoint = max(scored, key=lambda pair: pair[0])
    return folder.at(checkpoint.path).child(CHECKPOINT_FILE).uri


def latest_checkpoint(run_name: str, storage_path: str | Path | None = None) -> str:
    """The `checkpoint.pt` (local path or URI) of the run's most recent checkpoint: the one
    resume starts from. Ray records a checkpoint only once its upload is whole, so an upload
    cut off mid-way is never the latest."""
    folder, result = _result(run_name, storage_path)
    if result.checkpoint is None:
        raise FileNotFoundError(f"run {run_name!r} in {folder.uri} has no checkpoint yet")
    return folder.at(result.checkpoint.path).child(CHECKPOINT_FILE).uri


def latest_progress(run_name: str, storage_path: str | Path | None = None) -> Progress | None:
    """Where the run stands: its latest checkpoint's progress (epoch, history), or None for a
    run that has none yet."""
    try:
        return read_progress(latest_checkpoint(run_name, storage_path))
    except FileNotFoundError:
        return None


def _result(run_name: str, storage_path: str | Path | None) -> tuple[storage.StoragePath, Result]:
    folder = storage.resolve(run_folder(run_name, storage_path))
    try:
        return folder, Result.from_path(folder.path, storage_filesystem=folder.filesystem)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"no training run {run_name!r} at {folder.uri} ({error}); check the run name and "
            "checkpointing.storage_path"
        ) from error


def is_reported_number(value: object) -> bool:
    """A reported metric value that counts: a number, not NaN (NaN stands for a value an epoch
    did not measure, such as val_miou in an epoch without validation)."""
    return isinstance(value, int | float) and not math.isnan(value)
