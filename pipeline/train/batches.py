"""A training worker's stream of batches for one epoch, and what it measures on the way.

`epoch_batches` is one epoch of a worker's Ray Data shard as torch batches; `TimedBatches`
sums the time the loop waited for them (`data_wait_s`) and notes when the first arrived.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.config.schema import ExperimentConfig
from pipeline.train import startup


def epoch_batches(train_shard: Any, config: ExperimentConfig, world_size: int) -> Iterable[Any]:
    """One epoch of this worker's training batches, uint8 (B, H, W, 3) and (B, H, W)."""
    return train_shard.iter_torch_batches(
        batch_size=config.optimization.batch_size // world_size,
        drop_last=True,
        prefetch_batches=config.data.ingest.prefetch_batches,
    )


class TimedBatches:
    """The batches of `batches` in order; `wait_s` sums the wall time the loop waited for them.

    Each wait runs from asking for the next batch to receiving it: the first one (which starts
    the data set's execution for the epoch, or waits out an early start), every later one that
    Ray Data's own prefetching did not hide, and the last request that ends the epoch.
    """

    def __init__(self, batches: Iterable[Any]) -> None:
        self._batches = batches
        self._iterator: Iterator[Any] | None = None
        self.wait_s = 0.0
        self.first_batch_unix_s: float | None = None

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        asked = time.perf_counter()
        try:
            if self._iterator is None:
                self._iterator = iter(self._batches)
            batch = next(self._iterator)
            self.first_batch_unix_s = self.first_batch_unix_s or startup.now()
            return batch
        finally:
            self.wait_s += time.perf_counter() - asked
