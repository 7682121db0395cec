"""Saving and restoring a training run's full state in one Ray checkpoint folder.

The folder holds `checkpoint.pt`, written by `apcnet.checkpoint.save_checkpoint` so the
evaluation job and `apcnet` users read it like any model checkpoint: weights, class names,
palette and normalisation, plus the optimizer state and, under `extra`, everything a resumed
run needs (scaler and scheduler state, epoch, global iteration, the resolved config, the data
manifest path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apcnet.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class RunDescription:
    """What a checkpoint says about the run that wrote it (fixed for the whole run)."""

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict[str, Any]
    manifest_path: str


@dataclass(frozen=True)
class Progress:
    """How far a run got: the last completed epoch (0 = none), optimisation steps so far, and
    the metrics reported for every completed epoch, in order."""

    epoch: int = 0
    global_iteration: int = 0
    history: tuple[dict[str, float], ...] = ()


def save_training_state(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    run: RunDescription,
) -> Path:
    """Write `<folder>/checkpoint.pt`; returns its path.

    `model` is the bare model (not the DDP wrapper), so the keys load into a plain APCNet.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # save_checkpoint writes under a temporary name and renames: never a half-written file.
    return save_checkpoint(
        folder / CHECKPOINT_FILE,
        model,
        class_names=run.class_names,
        palette=run.palette,
        ignore_index=run.ignore_index,
        mean=run.mean,
        std=run.std,
        optimizer_state=optimizer.state_dict(),
        extra={
            "scaler": scaler.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": progress.epoch,
            "global_iteration": progress.global_iteration,
            "history": [dict(metrics) for metrics in progress.history],
            "config": run.config,
            "manifest_path": run.manifest_path,
        },
    )


def restore_training_state(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> Progress:
    """Load weights and optimizer/scheduler/scaler state from `folder`; return the progress."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint folder {folder} has no {CHECKPOINT_FILE}; it was not written by "
            "pipeline.train.state.save_training_state"
        )
    loaded = load_checkpoint(path)
    model.load_state_dict(loaded.state_dict)
    if loaded.optimizer_state is not None:
        optimizer.load_state_dict(loaded.optimizer_state)
    scheduler.load_state_dict(loaded.extra["scheduler"])
    scaler.load_state_dict(loaded.extra["scaler"])
    return _progress(loaded.extra)


def read_progress(folder: Path) -> Progress:
    """The epoch and iteration stored in a checkpoint folder, without building a model."""
    return _progress(load_checkpoint(folder / CHECKPOINT_FILE).extra)


def _progress(extra: dict[str, Any]) -> Progress:
    return Progress(
        epoch=int(extra["epoch"]),
        global_iteration=int(extra["global_iteration"]),
        history=tuple(dict(metrics) for metrics in extra.get("history", ())),
    )
