"""Where a run's start-up time goes: wall-clock marks from the driver's start to the first step.

The driver marks its own process start, the moment Ray answered and the moment it handed the
trainer to Ray; rank 0 marks the start of its training function (its process placed, torch
imported and the process group formed by Ray Train), the model ready (model, optimizer and any
checkpoint restored), the first batch received and the first optimisation step finished.

The first epoch of each attempt carries one start-up metric, `time_to_first_step_s` (from the
driver's start, or from the loop's when the driver's is unknown), and the marks themselves
(`startup/<mark>_unix_s`, kept in the checkpoint's history, not sent to MLflow), from which
`benchmarks/train.py` prints the phases (`phase_seconds`).

Unix seconds (not a monotonic clock) because the marks come from different processes.
"""

from __future__ import annotations

import os
import time
from itertools import pairwise

MARK_PREFIX = "startup/"
# In order. Each phase runs from the previous mark to its own.
MARKS = (
    "driver_process",  # the driver's Python process started (job start before it)
    "ray_connected",  # imports done, Ray initialised or joined
    "fit_called",  # data set verified and planned, MLflow run opened, trainer handed to Ray
    "loop_started",  # Ray Train's controller, worker group and process group up, loop called
    "model_ready",  # model, optimizer and checkpoint restored on the worker
    "first_batch",  # Ray Data started executing and streamed the first batch to rank 0
    "first_step",  # the first forward, backward and optimizer step
)
# Each phase's short name (the console) and description (benchmarks/train.py).
PHASES = {
    "ray_connected": ("ray", "imports and Ray connection"),
    "fit_called": ("set-up", "run set-up (data set check and plan, MLflow)"),
    "loop_started": ("workers", "trainer controller, worker group and process group"),
    "model_ready": ("model", "model, optimizer and checkpoint on the worker"),
    "first_batch": ("first batch", "data set execution start and first batch"),
    "first_step": ("first step", "first training step"),
}


def process_start_unix_s() -> float | None:
    """When this process started (Linux /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat:
            # Field 22, counted after the command name (which may contain spaces).
            after_name = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def now() -> float:
    return time.time()


TIME_TO_FIRST_STEP = "time_to_first_step_s"


def first_epoch_timeline(marks: dict[str, float | None]) -> dict[str, float]:
    """The first epoch's start-up metrics: `startup/<mark>_unix_s` for each mark taken, and
    `time_to_first_step_s` from the first of them to the first step."""
    taken = {name: float(at) for name in MARKS if (at := marks.get(name)) is not None}
    timeline = {f"{MARK_PREFIX}{name}_unix_s": at for name, at in taken.items()}
    if "first_step" in taken:
        timeline[TIME_TO_FIRST_STEP] = taken["first_step"] - next(iter(taken.values()))
    return timeline


def phase_seconds(metrics: dict[str, float]) -> dict[str, float]:
    """Each phase's duration, `startup/<mark>_s`, from the marks in `metrics`, plus
    `startup/total_s` from the first mark present to the first step."""
    taken = [
        (name, metrics[f"{MARK_PREFIX}{name}_unix_s"])
        for name in MARKS
        if f"{MARK_PREFIX}{name}_unix_s" in metrics
    ]
    phases = {
        f"{MARK_PREFIX}{name}_s": at - previous_at
        for (_, previous_at), (name, at) in pairwise(taken)
    }
    if len(taken) > 1 and taken[-1][0] == "first_step":
        phases[f"{MARK_PREFIX}total_s"] = taken[-1][1] - taken[0][1]
    return phases


def is_mark(key: str) -> bool:
    return key.startswith(MARK_PREFIX) and key.endswith("_unix_s")
