"""What one epoch of a training worker measures, kept out of the loop's way.

`EpochMeter` hands the loop its batches while it times the waits for them (the input wait:
from asking for the next batch to receiving it, including the first, which starts Ray Data's
execution for the epoch), moves the progress display on after every step, and sums the steps'
losses and images into an `EpochResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpochResult:
    """One epoch on one worker. `images` counts every worker's (the same on each)."""

    iterations: int
    images: int
    train_loss: float  # the mean over steps of the loss averaged over workers
    seconds: float
    data_wait_s: float  # this worker's own input wait
    first_batch_unix_s: float | None
    first_step_unix_s: float | None
    nonfinite_at_iteration: int | None = None  # the step whose loss was NaN or infinite
    augmentation_epoch_drift: int = 0  # see pipeline.train.worker.augmentation_epoch_drift

    def metrics(self, epoch: int, global_iteration: int, lr: float) -> dict[str, float]:
        """The epoch's reported metrics; `global_iteration` counts the steps after it."""
        return {
            "epoch": epoch,
            "global_iteration": global_iteration,
            "train_loss": self.train_loss,
            "lr": lr,
            "images_per_s": self.images / self.seconds,
            "epoch_time_s": self.seconds,
            # This rank's own wait; MLflow and the console line get rank 0's. A starved other
            # rank shows up there only as slower steps (rank 0 waits in the all-reduce).
            "data_wait_s": self.data_wait_s,
            "data_wait_fraction": self.data_wait_s / self.seconds,
        }


class EpochMeter:
    """Measures one epoch: iterate `meter.timed(batches)`, call `step_done` after each
    optimisation step, then `result()`. `progress` has `update(n)` and `close()` (a bar)."""

    def __init__(self, progress: Any, world_size: int) -> None:
        self._progress = progress
        self._world_size = world_size
        self._started = time.perf_counter()
        self._wait_s = 0.0
        self._loss_sum = 0.0
        self._iterations = 0
        self._images = 0
        self._first_batch_unix_s: float | None = None
        self._first_step_unix_s: float | None = None

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, None)
            self._wait_s += time.perf_counter() - asked
            if batch is None:
                return
            self._first_batch_unix_s = self._first_batch_unix_s or time.time()
            yield batch

    def step_done(self, loss: float, images: int) -> None:
        self._first_step_unix_s = self._first_step_unix_s or time.time()
        self._loss_sum += loss
        self._iterations += 1
        self._images += images
        self._progress.update(1)

    def result(
        self, nonfinite_at_iteration: int | None = None, augmentation_epoch_drift: int = 0
    ) -> EpochResult:
        self._progress.close()
        return EpochResult(
            iterations=self._iterations,
            images=self._images * self._world_size,
            train_loss=self._loss_sum / self._iterations if self._iterations else math.nan,
            seconds=time.perf_counter() - self._started,
            data_wait_s=self._wait_s,
            first_batch_unix_s=self._first_batch_unix_s,
            first_step_unix_s=self._first_step_unix_s,
            nonfinite_at_iteration=nonfinite_at_iteration,
            augmentation_epoch_drift=augmentation_epoch_drift,
        )
