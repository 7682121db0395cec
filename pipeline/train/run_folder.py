"""A training run's folder `<storage>/<run name>/`: its name, its records, its checkpoints.

Beside the checkpoints that Ray Train writes there (`epoch_NNNN/checkpoint.pt`, the
`checkpointing.num_to_keep` best by val_miou plus the latest, recorded in Ray's snapshot
file), the run keeps two records of its own:
- `config.yaml`: the resolved config the run was started with (written once, at the start);
- `COMPLETE.json`: written last, when the run has finished: its summary. A run is complete
  exactly when this file exists.
Both are written atomically (`pipeline.storage`), so a crash never leaves a half file.

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

from pipeline.config.schema import ExperimentConfig, config_from_dict
from pipeline.config.typed import load_yaml
from pipeline.storage import apcnet_home, write_text_atomically
from pipeline.train.state import CHECKPOINT_FILE

COMPLETE_MARKER = "COMPLETE.json"
CONFIG_FILE = "config.yaml"
RUNS_FOLDER = "runs"
SCORE_METRIC = "val_miou"


def default_run_name(config_path: str | Path | None, now: datetime | None = None) -> str:
    """`<config stem>-<YYYYmmdd-HHMMSS>`; the stem is "synthetic" for the embedded default."""
    stem = Path(config_path).stem if config_path is not None else "synthetic"
    return f"{stem}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def default_storage_path() -> Path:
    """Where run folders go when nothing else is named: `<home>/runs`."""
    return apcnet_home() / RUNS_FOLDER


def storage_root(config: ExperimentConfig, storage_path: str | Path | None = None) -> Path:
    """The folder run folders go in: the argument, else the config's, else `<home>/runs`."""
    chosen = storage_path or config.checkpointing.storage_path
    return Path(chosen).expanduser().resolve() if chosen else default_storage_path()


def run_folder(run_name: str, storage_path: str | Path | None = None) -> Path:
    """`<storage>/<run name>`, with the default storage when `storage_path` is None."""
    return Path(storage_path or default_storage_path()) / run_name


def stored_config(run_name: str, storage_path: Path) -> ExperimentConfig | None:
    """The resolved config a run was started with, or None for a run that never started."""
    path = run_folder(run_name, storage_path) / CONFIG_FILE
    if not path.is_file():
        return None
    return config_from_dict(load_yaml(path.read_text()), source=str(path))


def write_config_once(folder: Path, config_yaml: str) -> None:
    """Record the config a run starts with; a resumed run keeps its first record."""
    path = folder / CONFIG_FILE
    if not path.exists():
        write_text_atomically(path, config_yaml)


def completed_summary(run_name: str, storage_path: Path) -> dict[str, Any] | None:
    """The completion record of a finished run, or None when it has not finished."""
    marker = run_folder(run_name, storage_path) / COMPLETE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def write_complete_marker(folder: Path, summary: dict[str, Any]) -> None:
    """Mark the run in `folder` complete, with its summary (JSON). Written last."""
    write_text_atomically(folder / COMPLETE_MARKER, json.dumps(summary, indent=2) + "\n")


def best_checkpoint(run_name: str, storage_path: str | Path | None = None) -> Path:
    """Path of `checkpoint.pt` in the run's checkpoint with the highest val_miou.

    Raises FileNotFoundError naming the run folder when the run has no validated checkpoint.
    """
    result = _result(run_name, storage_path)
    scored = [
        (metrics.get(SCORE_METRIC), checkpoint)
        for checkpoint, metrics in result.best_checkpoints or []
        if _is_number(metrics.get(SCORE_METRIC))
    ]
    if not scored:
        raise FileNotFoundError(
            f"run {run_name!r} in {run_folder(run_name, storage_path)} has no checkpoint with "
            f"{SCORE_METRIC}; train it (python jobs/train.py --name {run_name}) until a "
            "validation epoch has run"
        )
    _, checkpoint = max(scored, key=lambda pair: pair[0])
    return Path(checkpoint.path) / CHECKPOINT_FILE


def latest_checkpoint(run_name: str, storage_path: str | Path | None = None) -> Path:
    """Path of `checkpoint.pt` in the run's most recent checkpoint (the one resume starts from)."""
    result = _result(run_name, storage_path)
    if result.checkpoint is None:
        raise FileNotFoundError(
            f"run {run_name!r} in {run_folder(run_name, storage_path)} has no checkpoint yet"
        )
    return Path(result.checkpoint.path) / CHECKPOINT_FILE


def _result(run_name: str, storage_path: str | Path | None) -> Result:
    folder = run_folder(run_name, storage_path)
    try:
        return Result.from_path(str(folder))
    except RuntimeError as error:
        raise FileNotFoundError(
            f"no training run {run_name!r} at {folder} ({error}); check the run name and "
            "checkpointing.storage_path"
        ) from error


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)
