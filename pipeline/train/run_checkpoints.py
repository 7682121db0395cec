"""Finding a training run's checkpoints: the best by val_miou and the latest.

A run's folder is `<storage>/<run name>/`; Ray Train keeps the `checkpointing.num_to_keep` best
checkpoints by val_miou plus the latest one there, and records them in its snapshot file. Both
lookups read that record through `ray.train.Result.from_path`, so they agree with what Ray
restores on resume (the latest) and what it kept (the best).
"""

from __future__ import annotations

import math
from pathlib import Path

from ray.train import Result

from pipeline.storage import apcnet_home
from pipeline.train.state import CHECKPOINT_FILE

SCORE_METRIC = "val_miou"


def default_storage_path() -> Path:
    """Where run folders go when the config names no storage: `<home>/runs`."""
    return apcnet_home() / "runs"


def run_folder(run_name: str, storage_path: str | Path | None = None) -> Path:
    """`<storage>/<run name>`, with the default storage when `storage_path` is None."""
    return Path(storage_path or default_storage_path()) / run_name


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
