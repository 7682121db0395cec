"""Fault injection for Ray Tune searches, installed by tests through `run_search(...,
extra_callbacks=...)`; never part of a search a user runs."""

import os
import signal
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial


class InterruptAfterTrials(Callback):
    """Interrupts the search like Ctrl-C once `count` trials of it have ended.

    Counts over the whole experiment (restored trials included) and fires only on the
    `count`-th, so the pickled copy a resumed search carries never fires again.
    """

    def __init__(self, count: int) -> None:
        self.count = count

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        ended = 1 + sum(
            other.status in (Trial.TERMINATED, Trial.ERROR)
            for other in trials
            if other is not trial
        )
        if ended == self.count:
            os.kill(os.getpid(), signal.SIGINT)  # Tune saves its state and stops cleanly
