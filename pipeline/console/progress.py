"""Progress on a job's console: a training epoch's, drawn from rank 0 on the driver, and a
driver's own progress over batches (evaluation, prediction)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# How rank 0 shows an epoch's progress: a live bar (the driver's stdout is a terminal), a plain
# line per tenth of an epoch (a file or pipe: CI, `ray job logs`), or nothing (a Tune trial).
ConsoleMode = Literal["bar", "lines", "off"]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TenthsOfAnEpoch:
    """Progress as plain lines, one when each tenth of the epoch is done (the last tenth is
    the epoch's own line): for a console that is a file or a pipe, which a redrawn bar would
    fill with every redraw."""

    def __init__(self, description: str, total: int) -> None:
        self._description = description
        self._total = max(total, 1)
        self._done = 0
        self._tenths_shown = 0
        self._started = time.monotonic()

    def update(self, n: int = 1) -> None:
        self._done += n
        tenths = min(10 * self._done // self._total, 9)
        if tenths > self._tenths_shown:
            self._tenths_shown = tenths
            rate = self._done / max(time.monotonic() - self._started, 1e-9)
            print(
                f"{self._description}  {10 * tenths}%  {self._done}/{self._total} it  "
                f"{rate:.3g} it/s",
                flush=True,
            )

    def close(self) -> None:
        pass


def epoch_bar(mode: ConsoleMode, epoch: int, total_epochs: int, iterations: int) -> Any:
    """Progress over one epoch's iterations, shown on the driver's console as `mode` says:
    "bar", a live bar (`ray.experimental.tqdm_ray`: the worker sends its state at most once a
    second, the driver redraws it); "lines", a plain line per tenth of the epoch; "off",
    nothing. `update(n)` after each step, `close()` at the end of the epoch."""
    description = f"epoch {epoch}/{total_epochs}"
    if mode == "off":
        return _NoBar()
    if mode == "lines":
        return _TenthsOfAnEpoch(description, iterations)
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=description, total=iterations, unit="it")
    # Drawn at once, while the epoch's first batch is on its way (Ray Data starts the data
    # set's execution anew every epoch); its later states follow at most once a second.
    bar.refresh()
    return bar


def progress_over(
    batches: Iterable[T], total: int | None, description: str, unit: str, size: Callable[[T], int]
) -> Iterator[T]:
    """`batches` as they come, with a progress bar over their items (`size(batch)` each, of
    `total` when known) drawn by this process, on stderr.

    The bar opens with the first batch: Ray Data starts an actor pool when iteration begins,
    and Ray core's driver then logs, straight to stderr where no filter reaches, that the
    pool's actors take object-store arguments (`core_worker.cc`, once per process: Ray Data
    2.60 hands every pool actor its context and transform by reference). Opened later, the
    bar is not cut in two by that line.
    """
    from tqdm import tqdm

    bar = None
    try:
        for batch in batches:
            if bar is None:  # not `bar or ...`: an empty bar, or one of no total, is falsy
                bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)
            yield batch
            bar.update(size(batch))
    finally:
        if bar is not None:
            bar.close()
