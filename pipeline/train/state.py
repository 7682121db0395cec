"""Saving and restoring a training run's full state in one Ray checkpoint folder.

The folder holds `checkpoint.pt`, written by `apcnet.checkpoint.save_checkpoint` so the
evaluation job and `apcnet` users read it like any model checkpoint: weights, class names,
palette and normalisation, plus the optimizer state and, under `extra`, the run's name and
everything a resumed run needs (scaler and scheduler state, epoch, global iteration, the
resolved config, the data manifest path).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.train.settings import RunDescription

if TYPE_CHECKING:
    import torch
    from torch import nn

# The driver imports this module to read a run's progress before it starts training, and must
# not import torch for that (about 1.2 s before the first step): torch and apcnet.checkpoint are
# imported where a checkpoint is written or read.

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FOLDER_PREFIX = "epoch_"


def checkpoint_folder_name(epoch: int) -> str:
    """The checkpoint folder written after `epoch` in the run folder: `epoch_0004`."""
    return f"{CHECKPOINT_FOLDER_PREFIX}{epoch:04d}"


@dataclass(frozen=True)
class Progress:
    """How far a run got: the last completed epoch (0 = none), optimisation steps so far, and
    the metrics reported for every completed epoch, in order."""

    epoch: int = 0
    global_iteration: int = 0
    history: tuple[dict[str, float], ...] = ()


@dataclass(frozen=True)
class TrainingState:
    """Everything a worker optimises and a resumed run continues from, as one object.

    `model` is the bare model (not the DDP wrapper), so a saved checkpoint loads into a plain
    APCNet. The torch objects change in place as training steps; `progress` is replaced by
    `after_epoch`, and `restored_from` returns the state a checkpoint holds.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress = Progress()

    def after_epoch(self, epoch: int, iterations: int, metrics: dict[str, float]) -> TrainingState:
        """The state once `epoch` finished after `iterations` steps, reporting `metrics`."""
        progress = Progress(
            epoch,
            self.progress.global_iteration + iterations,
            (*self.progress.history, metrics),
        )
        return replace(self, progress=progress)

    def save(self, folder: Path, run: RunDescription) -> Path:
        """Write `<folder>/checkpoint.pt` (atomically, by `apcnet.checkpoint.save_checkpoint`);
        returns its path."""
        from apcnet.checkpoint import save_checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(
            folder / CHECKPOINT_FILE,
            self.model,
            class_names=run.class_names,
            palette=run.palette,
            ignore_index=run.ignore_index,
            mean=run.mean,
            std=run.std,
            optimizer_state=self.optimizer.state_dict(),
            extra={
                "run_name": run.run_name,
                "scaler": self.scaler.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": self.progress.epoch,
                "global_iteration": self.progress.global_iteration,
                "history": [dict(metrics) for metrics in self.progress.history],
                "config": run.config,
                "manifest_path": run.manifest_path,
            },
        )

    def restored_from(self, folder: Path) -> TrainingState:
        """Load weights and optimizer/scheduler/scaler state from `folder` into this state's
        objects; returns the state with the checkpoint's progress."""
        path = folder / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint folder {folder} has no {CHECKPOINT_FILE}; it was not written by "
                "pipeline.train.state.TrainingState.save"
            )
        from apcnet.checkpoint import load_checkpoint

        loaded = load_checkpoint(path)
        self.model.load_state_dict(loaded.state_dict)
        if loaded.optimizer_state is not None:
            self.optimizer.load_state_dict(loaded.optimizer_state)
        self.scheduler.load_state_dict(loaded.extra["scheduler"])
        self.scaler.load_state_dict(loaded.extra["scaler"])
        return replace(self, progress=_progress(loaded.extra))


def read_progress(checkpoint_file: str | Path) -> Progress:
    """The progress stored in a `checkpoint.pt` (local path or s3:// / gs:// URI), without
    building a model."""
    with storage.local_file(checkpoint_file) as path:
        from apcnet.checkpoint import load_checkpoint

        return _progress(load_checkpoint(path).extra)


def _progress(extra: dict[str, Any]) -> Progress:
    return Progress(
        epoch=int(extra["epoch"]),
        global_iteration=int(extra["global_iteration"]),
        history=tuple(dict(metrics) for metrics in extra.get("history", ())),
    )
