"""A training worker's stream of batches for one epoch, and what it measures on the way.

`epoch_batches` is one epoch of a worker's Ray Data shard as torch batches; `TimedBatches`
sums the time the loop waited for them (`data_wait_s`) and notes when the first arrived;
`EarlyStartedBatches` fetches an epoch's first batch in the background, so that the data set's
start-up overlaps the worker's model build.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


class EarlyStartedBatches:
    """The batches `open_batches()` returns, opened and the first of them fetched by a
    background thread from construction on, so that the data set's start-up overlaps whatever
    the caller does next. An error in opening or in that fetch is raised where the first batch
    is asked for.

    The thread also opens them because opening `iter_torch_batches` imports torch: the worker's
    own import of torch then runs beside the data set's start instead of before it."""

    _END = object()

    def __init__(self, open_batches: Callable[[], Iterable[Any]]) -> None:
        self._iterator: Iterator[Any] | None = None
        self._first: concurrent.futures.Future = concurrent.futures.Future()
        # A daemon thread: a fetch that never ends (its epoch abandoned) must not hold up the
        # worker process's exit, as an executor's thread would.
        threading.Thread(
            target=self._fetch_first, args=(open_batches,), name="first-batch", daemon=True
        ).start()

    def _fetch_first(self, open_batches: Callable[[], Iterable[Any]]) -> None:
        try:
            self._iterator = iter(open_batches())
            self._first.set_result(next(self._iterator, self._END))
        except BaseException as error:  # handed to whoever asks for the first batch
            self._first.set_exception(error)

    def __iter__(self) -> Iterator[Any]:
        first = self._first.result()
        if first is self._END:
            return
        yield first
        assert self._iterator is not None  # set before the first batch was
        yield from self._iterator


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
