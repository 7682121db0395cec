"""What a run does when workers or nodes fail, and what it tells the user when it gives up.

Ray Train restarts failed workers from the last checkpoint up to `scaling.max_failures` times.
After a node is lost, the restart waits for nodes that can hold the workers again (a
replacement the autoscaler starts, or `ray start` by hand). Ray Train bounds each such wait by
`RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (the setting its own timeout message names), which
the driver sets from `scaling.node_wait_s`; with no controller retries allowed, the run then
fails, and the driver tells the user with `WorkersNotPlacedError` when the cluster indeed
cannot hold the workers, instead of Ray's default of waiting and retrying forever. An elastic
group (`scaling.num_workers: [min, max]`) restarts on the workers that fit, and waits only
below `min`: `pipeline.train.cluster_watch` bounds that wait by `node_wait_s` as well, and
each restart after a lost node by `elastic_restart_bound_s`.

How losses count: a node lost without notice ends its workers, one worker-group failure
against `scaling.max_failures`, for a fixed group as for an elastic one. A node Ray drains for
preemption first (a spot reclaim with notice, `ray drain-node --reason PREEMPTION`) counts
against Ray Train's `max_preemption_failures` instead, which is left unlimited: each such
restart resumes from the checkpoint saved on the notice, so it costs at most one step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import ray
from ray.train import ControllerError, FailureConfig

from pipeline.config.schema import ScalingSection
from pipeline.errors import UserError

# How many starts of `node_wait_s` each an elastic group gets to be training again after a
# lost node (`elastic_restart_bound_s`): one may be spent on a stale view of the cluster.
ELASTIC_START_ATTEMPTS = 3
# Read by Ray Train's controller, which gets the driver's RAY_TRAIN_* variables.
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite (not a worker failure)."""


class WorkersNotPlacedError(UserError):
    """The cluster had no room for the training workers within `scaling.node_wait_s`."""


def failure_config(scaling: ScalingSection) -> FailureConfig:
    """Ray Train's failure handling for `scaling`.

    A worker group that cannot start in time is a controller failure in Ray Train; allowing
    none makes the first wait past `node_wait_s` end a fixed group's run. An elastic group is
    allowed any number: Ray's elastic policy sizes a restart from a view of the cluster that
    Ray Data's autoscaling coordinator refreshes only every 20 s, so right after a node is lost
    it may try the old size once more; that start fails after `node_wait_s`, and the next one
    sees the nodes that are left. Ray counts these failures over the whole run, so any finite
    limit would end a long run on spot nodes at its Nth loss; `pipeline.train.cluster_watch`
    bounds each restart instead (`elastic_restart_bound_s`), and the wait below `min`.
    """
    return FailureConfig(
        max_failures=scaling.max_failures,
        controller_failure_limit=-1 if scaling.elastic else 0,
        # The checkpoint saved on a preemption notice registers with the ranks that stay, even
        # when the preempted node goes before its own ranks have reported (a short notice).
        relax_collectives_on_preemption=True,
    )


def elastic_restart_bound_s(scaling: ScalingSection) -> float:
    """How long an elastic group may take to train again after one of its nodes is lost, with
    room for `min` workers left: `ELASTIC_START_ATTEMPTS` starts of `node_wait_s`."""
    return ELASTIC_START_ATTEMPTS * scaling.node_wait_s


def workers_not_placed(
    error: BaseException, run_name: str, scaling: ScalingSection
) -> WorkersNotPlacedError | None:
    """The user-facing error for a run that failed in Ray Train's controller while the
    cluster's live nodes cannot hold its workers, else None."""
    if not isinstance(error, ControllerError):
        return None
    per_worker = worker_resources(scaling)
    room = workers_that_fit(per_worker, _live_node_resources())
    if room >= scaling.min_workers:
        return None
    return WorkersNotPlacedError(
        f"run {run_name!r}: no room for {scaling.min_workers} training workers of "
        f"{per_worker} within scaling.node_wait_s={scaling.node_wait_s:g} s (the cluster's "
        f"live nodes hold {room}; a node was lost and none with those resources joined). "
        "Start a node that offers them, or lower scaling.num_workers, then run the same --name "
        "again: it resumes from its last checkpoint"
    )


def worker_resources(scaling: ScalingSection) -> dict[str, float]:
    """What one training worker reserves, as Ray Train's ScalingConfig asks for it."""
    default = {"GPU": 1.0} if scaling.use_gpu else {"CPU": 1.0}
    return dict(scaling.resources_per_worker) or default


def workers_that_fit(per_worker: Mapping[str, float], nodes: Iterable[Mapping[str, float]]) -> int:
    """How many workers of `per_worker` the nodes (each its total resources) can hold."""
    wanted = {name: amount for name, amount in per_worker.items() if amount > 0}
    if not wanted:
        return sys.maxsize  # a worker that reserves nothing fits anywhere
    return sum(
        min(int(node.get(name, 0.0) // amount) for name, amount in wanted.items()) for node in nodes
    )


def _live_node_resources() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def restart_not_started(run_name: str, scaling: ScalingSection) -> WorkersNotPlacedError:
    """The user-facing error for an elastic run stopped by `ClusterWatch`: after a lost node, no
    worker group started within `elastic_restart_bound_s` although the nodes had room."""
    bound = elastic_restart_bound_s(scaling)
    return WorkersNotPlacedError(
        f"run {run_name!r}: after a node was lost, no worker group of scaling.num_workers="
        f"{scaling.workers_text} started within {bound:g} s ({ELASTIC_START_ATTEMPTS} x "
        f"scaling.node_wait_s), although the live nodes offer room for {scaling.min_workers} "
        f"workers of {worker_resources(scaling)}; other work may hold those resources. Free "
        "them or start a node, then run the same --name again: it resumes from its last "
        "checkpoint"
    )


def too_few_nodes(run_name: str, scaling: ScalingSection) -> WorkersNotPlacedError:
    """The user-facing error for an elastic run stopped by `ClusterWatch`: its group stayed
    below `min` workers for `scaling.node_wait_s`."""
    per_worker = worker_resources(scaling)
    return WorkersNotPlacedError(
        f"run {run_name!r}: the cluster held fewer than the {scaling.min_workers} workers of "
        f"{per_worker} that scaling.num_workers={scaling.workers_text} needs at least, for "
        f"scaling.node_wait_s={scaling.node_wait_s:g} s, and the run was stopped. Start a "
        "node that offers them, then run the same --name again: it resumes from its last "
        "checkpoint"
    )
