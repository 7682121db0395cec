"""Where a run's start-up time goes: wall-clock marks from the driver's start to the first step.

The driver marks its own process start, the moment Ray answered and the moment it handed the
trainer to Ray; rank 0 marks the start of its training function (its process placed, before
torch is imported), the model ready (torch imported, the process group formed, the model built),
the first batch received and the first optimisation step finished. The first epoch of each attempt carries the marks in its metrics
(`startup/<mark>_unix_s`, kept in the checkpoint's history, not sent to MLflow as such) and
MLflow gets the phase durations (`startup/<phase>_s`). `benchmarks/train.py` adds the time
from `ray job submit` to the driver's start.

Unix seconds (not a monotonic clock) because the marks come from different processes.
"""

from __future__ import annotations

import os
import time
from itertools import pairwise
from typing import Any

MARK_PREFIX = "startup/"
# In order. Each phase runs from the previous mark to its own.
MARKS = (
    "driver_process",  # the driver's Python process started (job start before it)
    "ray_connected",  # imports done, Ray initialised or joined
    "fit_called",  # data set verified and planned, MLflow run opened, trainer handed to Ray
    "loop_started",  # Ray Train's controller and worker group up, the training function called
    "model_ready",  # torch imported, process group formed, model, optimizer, checkpoint restored
    "first_batch",  # Ray Data started executing and streamed the first batch to rank 0
    "first_step",  # the first forward, backward and optimizer step
)
# Each phase's short name (the console) and description (benchmarks/train.py).
PHASES = {
    "ray_connected": ("ray", "imports and Ray connection"),
    "fit_called": ("set-up", "run set-up (data set check and plan, MLflow)"),
    "loop_started": ("workers", "trainer controller and worker group"),
    "model_ready": ("model", "torch import, process group and model on the worker"),
    "first_batch": ("first batch", "data set execution start and first batch"),
    "first_step": ("first step", "first training step"),
}


# Ray Train V2's controller acts on its worker group only when it polls it, at least
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S apart (2 s by default): placing the group, launching the
# training function, taking in each `ray.train.report` and seeing the end each wait for the next
# poll. Half a second keeps that wait short for a run of a few workers; the poll is one
# small RPC per worker. A value already in the environment wins (a large cluster may want 2 s).
RAY_TRAIN_SETTINGS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


# For a Ray instance that this job starts itself and stops at its end. Ray Train's
# PreemptionWatcher (an actor process per worker group, about 2 s of CPU to start, beside the
# model build and the first batch) watches for nodes that Ray drains ahead of a spot
# reclaim or a scale-down. The one node of such an instance is this machine, drained by
# nobody, and it ends with the job. On a cluster (`ray job submit`, RAY_ADDRESS) the watcher
# stays on, as cluster.yaml's spot workers need.
LOCAL_INSTANCE_SETTINGS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def start_autoscaling_coordinator() -> Any:
    """Start Ray's autoscaling coordinator now, without waiting for it to come up.

    Ray Train's controller, as soon as it starts, registers its workers' resources with this
    actor (detached and named: one per cluster, also used by Ray Data) and waits for the
    answer before it places its worker group. Whoever asks first starts the actor's process.
    Left to the controller, that start lies on the path to the first step: 1.4 s on the 2-core
    machine. Asked for by the driver as soon as it is connected, the actor comes up while the
    driver plans the data set and the controller starts. Where it already runs (a cluster's
    second job) this is a lookup. Returns the actor's handle. Written against Ray 2.60.0;
    tests/test_ray_internals.py checks that Train's controller finds the actor started here.
    """
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    return get_or_create_autoscaling_coordinator()


def apply_ray_train_settings() -> None:
    """Set `RAY_TRAIN_SETTINGS` in this driver's environment unless already set; Ray Train
    forwards `RAY_TRAIN_*` variables to its controller and workers."""
    for name, value in RAY_TRAIN_SETTINGS.items():
        os.environ.setdefault(name, value)


def apply_local_instance_settings() -> None:
    """Set `LOCAL_INSTANCE_SETTINGS` unless already set: call when this job starts its own
    Ray instance."""
    for name, value in LOCAL_INSTANCE_SETTINGS.items():
        os.environ.setdefault(name, value)


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


def mark_metrics(marks: dict[str, float | None]) -> dict[str, float]:
    """`startup/<mark>_unix_s` for each known mark that was taken."""
    return {
        f"{MARK_PREFIX}{name}_unix_s": float(marks[name])
        for name in MARKS
        if marks.get(name) is not None
    }


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


def startup_line(metrics: dict[str, float]) -> str | None:
    """One console line: the total from the driver's start to the first step and its phases."""
    phases = phase_seconds(metrics)
    total = phases.pop(f"{MARK_PREFIX}total_s", None)
    if total is None:
        return None
    parts = ", ".join(
        f"{PHASES[key[len(MARK_PREFIX) : -2]][0]} {seconds:.1f}" for key, seconds in phases.items()
    )
    return f"start-up  {total:.1f} s to the first step ({parts})"
