"""Two timings of Ray Data's streaming executor, set for this project's short decode tasks.

Checked against Ray 2.60.0. Every execution of a dataset (each training epoch, each
validation pass, each benchmark epoch) builds a new streaming executor, and two of its
constants leave CPUs idle when tasks take a fraction of a second, as a decode task of 32
images does:

- How often it reads the cluster's resources (`ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S`,
  1 s). It asks Ray Data's autoscaling coordinator actor without waiting: the first call
  returns the empty cached answer and sends the request, which is looked at again only at the
  next refresh. For that first second of every execution the limits are zero, and the
  allocator's starvation guard lets one task run at a time whatever the cluster holds.
  Measured with 2 CPUs (an ingest epoch of 8 decode tasks that takes 1.4 s): the second task
  started 1.0 s after the first; with a 0.1 s refresh, 0.11 s after it.
- How long its loop waits for running tasks (`WAIT_FOR_TASK_COMPLETION_TIMEOUT_S`, 0.1 s). The
  loop waits for all of them or for the timeout, so when one of two tasks finishes, the next is
  submitted up to 0.1 s later. Measured with 2 CPUs and 0.4 s tasks: 0.11-0.12 s from a task's
  end to the next start (an epoch of 10 tasks 2.75 s instead of 2.0); with 0.02 s, 0.04-0.05 s
  (2.35 s), for about 0.1 s more of the executor's CPU per epoch.

What the shorter values cost: a refresh is one small call to the coordinator actor (sent only
once the previous one has been answered), and each look at the tasks one `ray.wait` in the
executor's thread. Both are process-wide values of Ray Data (a class attribute and a module
global), so they have to be set in every process that runs an executor: the driver that
iterates a dataset, and the split coordinator actors through which Ray Train streams datasets
to its workers. `pipeline.data.ingest` calls `apply_executor_timing` when it is imported, which
covers both: the coordinators import it to unpickle the datasets' batch callables before they
build an executor.
"""

from __future__ import annotations

from ray.data._internal.execution import streaming_executor_state
from ray.data._internal.execution.resource_manager import ResourceManager

# Seconds between two reads of the cluster's resources by the executor (Ray's own: 1.0).
LIMITS_REFRESH_S = 0.1
# Seconds the executor's loop waits for its running tasks before it looks again (Ray's: 0.1).
TASK_WAIT_S = 0.02

_LIMITS_ATTRIBUTE = (ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")
_TASK_WAIT_ATTRIBUTE = (streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S")


def apply_executor_timing(
    limits_refresh_s: float = LIMITS_REFRESH_S, task_wait_s: float = TASK_WAIT_S
) -> None:
    """Set this process's Ray Data executors to re-read the cluster's resources every
    `limits_refresh_s` and to look at their running tasks every `task_wait_s`.

    Raises RuntimeError when the installed Ray lacks either setting (the change would then
    silently do nothing); tests/test_ray_internals.py names this module when that happens.
    """
    for (owner, name), seconds in (
        (_LIMITS_ATTRIBUTE, limits_refresh_s),
        (_TASK_WAIT_ATTRIBUTE, task_wait_s),
    ):
        if name not in vars(owner):
            raise RuntimeError(
                f"Ray Data has no {name} in this Ray version; recheck "
                "pipeline.data.executor_timing (written against Ray 2.60.0)"
            )
        setattr(owner, name, seconds)


def executor_timing() -> tuple[float, float]:
    """(limits refresh, task wait) in seconds, as this process's executors use them now."""
    (limits_owner, limits_name), (wait_owner, wait_name) = _LIMITS_ATTRIBUTE, _TASK_WAIT_ATTRIBUTE
    return float(getattr(limits_owner, limits_name)), float(getattr(wait_owner, wait_name))
