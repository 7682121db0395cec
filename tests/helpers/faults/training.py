"""Test-only training hooks: a worker that dies at a chosen moment, a loss that turns NaN.

A worker really dies (`os._exit(1)`, no cleanup, like a crashed process), once per run: a
marker file in the run folder remembers the kill, so the replacement worker that Ray Train
starts trains on. Tests install these hooks through `train_or_resume(..., hooks=...)` (or
`RunRequest.hooks`) or, for a job run as a subprocess, through
`APCNET_TRAINING_HOOKS=helpers.faults.training:<factory>` with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray.cloudpickle
import torch

from pipeline.train.hooks import LoopPosition, TrainingHook

# Ray workers cannot import this test module (tests/ is not on their path), so its hooks
# travel to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def kill_marker(run_folder: str | Path, moment: str, epoch: int) -> Path:
    """The file that records that a worker was killed at `moment` of `epoch`."""
    return Path(run_folder) / f".testing-killed-{moment}-epoch-{epoch}"


def _exit_once(position: LoopPosition, moment: str) -> None:
    marker = kill_marker(position.run_folder, moment, position.epoch)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("killed by a test hook\n")
    print(f"[test hook] worker rank {position.rank} exits abruptly ({moment})", flush=True)
    os._exit(1)


@dataclass(frozen=True)
class KillBeforeReport(TrainingHook):
    """Rank 0 dies after `epoch`'s training and validation, before the epoch is reported:
    the whole epoch is lost and replayed."""

    epoch: int

    def before_report(self, position: LoopPosition) -> None:
        if position.epoch == self.epoch and position.rank == 0:
            _exit_once(position, "before-report")


@dataclass(frozen=True)
class KillMidEpoch(TrainingHook):
    """The last worker dies before the middle step of `epoch`."""

    epoch: int

    def before_step(self, position: LoopPosition) -> None:
        first = (self.epoch - 1) * position.iterations_per_epoch + 1
        middle = first + position.iterations_per_epoch // 2
        if position.iteration == middle and position.rank == position.world_size - 1:
            _exit_once(position, "mid-epoch")


@dataclass(frozen=True)
class NanLossAt(TrainingHook):
    """The loss becomes NaN at global `iteration` (1-based) on every worker."""

    iteration: int

    def loss_computed(self, position: LoopPosition, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if position.iteration == self.iteration else loss


def two_worker_deaths() -> list[TrainingHook]:
    """For APCNET_TRAINING_HOOKS: rank 0 dies just before epoch 1 is reported (epoch 1 is
    replayed from scratch), then the last worker in the middle of epoch 2 (resumed from epoch
    1's checkpoint)."""
    return [KillBeforeReport(epoch=1), KillMidEpoch(epoch=2)]


@dataclass(frozen=True)
class SlowSteps(TrainingHook):
    """Every step waits `seconds` first (`one_worker_seconds` in a group of one): a tiny
    model's steps take about as long as a real one's, so that a cluster event reliably lands
    inside a run, between two steps; and a group shrunk to one worker, which takes every
    image of a step itself, is slower, as it would be."""

    seconds: float
    one_worker_seconds: float | None = None

    def before_step(self, position: LoopPosition) -> None:
        alone = position.world_size == 1 and self.one_worker_seconds is not None
        time.sleep(self.one_worker_seconds if alone else self.seconds)


def slow_steps() -> tuple[TrainingHook, ...]:
    """`APCNET_TRAINING_HOOKS=helpers.faults.training:slow_steps`: 0.5 s per step, 3 s in a
    group of one (the elastic run's shrunk phase then outlasts Ray's 20-40 s to grow back in
    fewer epochs)."""
    return (SlowSteps(0.5, one_worker_seconds=3.0),)
