"""What a run does when workers or nodes fail, and what it tells the user when it gives up.

Ray Train restarts failed workers from the last checkpoint up to `scaling.max_failures` times.
After a node is lost, the restart waits for nodes that can hold the workers again (a
replacement the autoscaler starts, or `ray start` by hand); `scaling.node_wait_s` bounds that
wait, and the run then fails with `WorkersNotPlacedError` instead of Ray's default of waiting
and retrying forever.
"""

from __future__ import annotations

import os

from ray.train import ControllerError, FailureConfig

from pipeline.config.schema import ScalingSection
from pipeline.errors import UserError

# Ray Train V2 reads this in its controller, which gets the driver's RAY_TRAIN_* variables.
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite (not a worker failure)."""


class WorkersNotPlacedError(UserError):
    """The cluster had no room for the training workers within `scaling.node_wait_s`."""


def failure_config(scaling: ScalingSection) -> FailureConfig:
    """Ray Train's failure handling for `scaling`; sets the worker-group start timeout.

    A start that times out is a controller failure in Ray Train; allowing none makes the
    first wait past `node_wait_s` end the run.
    """
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = str(scaling.node_wait_s)
    return FailureConfig(max_failures=scaling.max_failures, controller_failure_limit=0)


def workers_not_placed(
    error: BaseException, run_name: str, scaling: ScalingSection
) -> WorkersNotPlacedError | None:
    """The user-facing error for a run whose workers found no room in time, else None."""
    if not _is_start_timeout(error):
        return None
    return WorkersNotPlacedError(
        f"run {run_name!r}: no room for {scaling.num_workers} training workers of "
        f"{dict(scaling.resources_per_worker)} within scaling.node_wait_s={scaling.node_wait_s:g} s"
        " (a node was lost and none with those resources joined). Start a node that offers "
        "them, or lower scaling.num_workers, then run the same --name again: it resumes from "
        "its last checkpoint"
    )


def _is_start_timeout(error: BaseException) -> bool:
    # Ray 2.60.0 wraps the timeout (ray.train.v2._internal.exceptions.
    # WorkerGroupStartupTimeoutError, not exported) in the public ControllerError; matched by
    # name to stay off the private module. tests/test_cluster_path.py fails if this changes.
    cause = getattr(error, "controller_failure", None)
    return isinstance(error, ControllerError) and (
        type(cause).__name__ == "WorkerGroupStartupTimeoutError"
    )
