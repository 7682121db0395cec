"""Ray Data's executor learns its cluster's resources within a tenth of a second, not a second.

Checked against Ray 2.60.0. Every execution of a dataset (each training epoch, each
validation pass, each benchmark epoch) builds a new streaming executor. Its resource manager
takes the CPUs and object store it may use from Ray Data's autoscaling coordinator actor,
asked without blocking: the first call returns the empty cached answer and sends the request,
and the answer is looked at again only when the manager refreshes its limits, once every
`ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S` (1 s). For that first second the limits are
zero, and the allocator's starvation guard lets one task run at a time whatever the cluster
holds. Measured with 2 CPUs (a trace of an ingest epoch of 8 decode tasks that takes 1.4 s):
the second task started 1.0 s after the first; with a 0.1 s refresh, 0.11 s after it.

The limit is a class attribute, so it has to be set in every process that runs an executor:
the driver that iterates a dataset, and the split coordinator actors through which Ray Train
streams datasets to its workers. `pipeline.data.ingest` calls `refresh_limits_quickly` when it
is imported, which covers both: the coordinators import it to unpickle the datasets' batch
callables before they build an executor. Refreshing more often costs one small actor call to
the coordinator per refresh while an earlier one is not pending.
"""

from __future__ import annotations

from ray.data._internal.execution.resource_manager import ResourceManager

# Seconds between two reads of the cluster's resources by Ray Data's executor (Ray's own: 1.0).
LIMITS_REFRESH_S = 0.1
_RAY_ATTRIBUTE = "GLOBAL_LIMITS_UPDATE_INTERVAL_S"


def refresh_limits_quickly(seconds: float = LIMITS_REFRESH_S) -> None:
    """Make this process's Ray Data executors re-read the cluster's resources every `seconds`.

    Raises RuntimeError when the installed Ray has no such setting (the workaround would then
    silently do nothing); tests/test_ray_internals.py names this function when that happens.
    """
    if _RAY_ATTRIBUTE not in vars(ResourceManager):
        raise RuntimeError(
            f"ray.data's ResourceManager has no {_RAY_ATTRIBUTE} in this Ray version; recheck "
            "pipeline.data.executor_limits (written against Ray 2.60.0)"
        )
    setattr(ResourceManager, _RAY_ATTRIBUTE, seconds)


def limits_refresh_s() -> float:
    """The refresh interval this process's executors use now."""
    return float(getattr(ResourceManager, _RAY_ATTRIBUTE))
