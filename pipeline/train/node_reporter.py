"""One utilisation reporter per node that runs training workers, started by the workers.

The lowest rank on each node starts a `NodeReporter` actor pinned to its own node (no CPU
reserved: it samples every few seconds). The worker owns the actor, so it ends with
the worker: a restarted or resized group starts reporters on the nodes it then runs on, and
a lost node's reporter goes with it. The actor, not the worker, imports MLflow (the workers
never do; see `pipeline.train.epoch_logging`).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.tracking.node_metrics import NodeMetricsReporter, NodeMetricsTarget

# How long a finished worker waits for its node's reporter to log its last samples.
STOP_WAIT_S = 40.0


class NodeReporter:
    """Ray actor: a `NodeMetricsReporter` for the node the actor runs on."""

    def __init__(self, target: NodeMetricsTarget) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()
        self.reporter = NodeMetricsReporter(target, self.node_id)

    def node(self) -> str:
        """The Ray node id this reporter samples and names its metrics after."""
        return self.node_id

    def stop(self) -> int:
        """Stop sampling, log what is pending; the samples logged in all."""
        self.reporter.stop()
        return self.reporter.logged_samples


def start_node_reporter(target: NodeMetricsTarget | None, placement: list[str], rank: int) -> Any:
    """On the lowest rank of each node (`placement`: each rank's Ray node id): a
    `NodeReporter` actor on this node; None on the other ranks, or with node metrics off.
    Chosen by node id, not Ray Train's local rank, which counts ranks per IP address: nodes
    that share a host would get one reporter between them."""
    if target is None or placement.index(placement[rank]) != rank:
        return None
    pinned = NodeAffinitySchedulingStrategy(node_id=placement[rank], soft=False)
    actor = ray.remote(NodeReporter).options(num_cpus=0, scheduling_strategy=pinned)
    return actor.remote(target)


def stop_node_reporter(reporter: Any) -> None:
    """Stop `reporter` (None: nothing), so its last samples are logged before the worker
    ends; a tracking server that does not answer within STOP_WAIT_S costs them, not the run."""
    if reporter is None:
        return
    try:
        ray.get(reporter.stop.remote(), timeout=STOP_WAIT_S)
    except ray.exceptions.GetTimeoutError:
        ray.kill(reporter)
