"""What the commands do to a replica: `up`, `down`, `add-node`, `kill-node`, the two steps of
`preempt-node` and the tracking server's `stop-tracking`, `start-tracking` and
`restart-tracking`.

Each takes the replica's folder, changes the processes and the state file, and returns what a
caller reports; the caller holds the folder's lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from replica.parts import (
    TRACKING_PART,
    clear_leftovers,
    free_ports,
    node_temp_dir,
    require_port_free,
    start_mlflow,
    start_ray_node,
    start_s3,
    wait_for_mlflow,
    write_token,
)
from replica.processes import STOP_GRACE_S, alive_parts, stop_parts
from replica.ray_nodes import drain_for_preemption, listed_nodes, node_id_of
from replica.report import TOOL_COMMAND
from replica.state import (
    STATE_FILE,
    LocalClusterError,
    Part,
    Replica,
    load_state,
    require_replica,
    save_state,
)


def up(directory: Path, nodes: int, cpus: int, object_store_mb: int, bucket: str) -> Replica:
    """Start S3, MLflow and `nodes` Ray nodes one after another (simultaneous starts clash on
    ports); each is recorded as it starts, and a failure stops what had started."""
    if nodes < 2:
        raise LocalClusterError("--nodes counts the head too: at least 2 (a head and a worker)")
    node_temp_dir(directory, 99)  # a folder too long fails before anything starts
    previous = load_state(directory)
    if previous is not None:
        if running := alive_parts(previous):
            raise LocalClusterError(
                f"a local cluster already runs in {directory} ({', '.join(running)} alive): "
                f"bring it down first with `{TOOL_COMMAND} down --dir {directory}`"
            )
        stop_parts(previous, previous.parts, STOP_GRACE_S)  # strays of a crashed replica
    clear_leftovers(directory)
    gcs, dashboard, s3, mlflow = free_ports(4, set())
    replica = Replica(
        directory=str(directory),
        bucket=bucket,
        cpus_per_node=cpus,
        object_store_mb=object_store_mb,
        gcs_port=gcs,
        dashboard_port=dashboard,
        s3_port=s3,
        mlflow_port=mlflow,
    )
    write_token(Path(replica.token_path))
    save_state(replica)
    try:
        start_s3(replica)
        server = start_mlflow(replica)
        for _ in range(nodes):
            start_ray_node(replica)
        wait_for_mlflow(replica, server)
    except BaseException:
        down(directory)
        raise
    return replica


def down(directory: Path) -> int:
    """Stop every process of the replica and forget it; returns how many processes stopped.
    Logs and the MLflow database stay in the folder until the next `up`."""
    replica = require_replica(directory)
    stopped = stop_parts(replica, replica.parts, STOP_GRACE_S)
    Path(replica.token_path).unlink(missing_ok=True)
    (directory / STATE_FILE).unlink()
    return stopped


def add_node(directory: Path) -> Part:
    """Start one more Ray worker node; returns once it runs."""
    return start_ray_node(require_replica(directory))


def worker_node(replica: Replica, index: int) -> Part:
    """Worker node `index` (n1, n2, ...): never the head."""
    if not 0 < index < len(replica.nodes):
        raise LocalClusterError(
            f"no worker node {index} (workers: 1 to {len(replica.nodes) - 1}; node 0, the "
            "head, holds the GCS and the job drivers)"
        )
    return replica.nodes[index]


def kill_node(directory: Path, index: int) -> int:
    """SIGKILL every process of worker node `index` at once, as if its machine vanished."""
    replica = require_replica(directory)
    return stop_parts(replica, [worker_node(replica, index)], grace_s=0.0)


@dataclass(frozen=True)
class PreemptionNotice:
    """A worker node Ray was told will be preempted: its index and part, its Ray node id, and
    the `time.monotonic()` at which the notice runs out (at or just after Ray's deadline)."""

    index: int
    node: Part
    node_id: str
    deadline: float


def give_preemption_notice(directory: Path, index: int, deadline_s: int) -> PreemptionNotice:
    """Drain worker node `index` with reason preemption and `deadline_s` seconds of notice, as
    a cloud reclaiming a spot VM would. Ray stops an idle node's raylet at once; a busy node
    runs on until `end_preemption` kills it."""
    if deadline_s < 1:
        raise LocalClusterError(f"--deadline-s {deadline_s}: give at least 1 s of notice")
    replica = require_replica(directory)
    node = worker_node(replica, index)
    if node.name not in alive_parts(replica):
        raise LocalClusterError(
            f"{node.name} is already dead (pid {node.pid}): start another with `add-node`"
        )
    node_id = node_id_of(listed_nodes(replica), node.name)
    message = f"local replica {replica.directory}: {node.name} preempted in {deadline_s} s"
    drain_for_preemption(replica, node_id, message, deadline_s)
    # Counted from Ray's answer: the kill never comes before the deadline Ray was given.
    return PreemptionNotice(index, node, node_id, time.monotonic() + deadline_s)


def end_preemption(directory: Path, notice: PreemptionNotice) -> int:
    """At the notice's deadline: `kill_node` on the node, unless the folder's replica no longer
    holds that very node (brought down, or down and up again, during the notice)."""
    replica = require_replica(directory)
    if replica.part(notice.node.name) != notice.node:
        raise LocalClusterError(
            f"{notice.node.name} of {directory} is not the node that was drained (the replica "
            "was brought down during the notice): nothing killed"
        )
    return kill_node(directory, notice.index)


def tracking_server(replica: Replica) -> Part:
    server = replica.part(TRACKING_PART)
    if server is None:
        raise LocalClusterError(
            f"no MLflow server recorded in {replica.directory} (bring the replica down and up)"
        )
    return server


def stop_tracking(directory: Path) -> int:
    """Stop the MLflow server's processes by PID (SIGTERM, SIGKILL after the grace period);
    returns how many stopped. It stays recorded, so `status` shows it down until
    `start-tracking`."""
    replica = require_replica(directory)
    return stop_parts(replica, [tracking_server(replica)], STOP_GRACE_S)


def start_tracking(directory: Path) -> Part:
    """Start the stopped MLflow server again on the same port, with the same SQLite store and
    artifact destination (runs and metrics logged before the stop stay); returns once it
    answers /health."""
    replica = require_replica(directory)
    if TRACKING_PART in alive_parts(replica):
        raise LocalClusterError(
            f"the MLflow server already runs (pid {tracking_server(replica).pid}) on "
            f"{replica.mlflow_url}: use `restart-tracking` to restart it"
        )
    require_port_free(replica.mlflow_port, "the MLflow server")
    server = start_mlflow(replica)
    wait_for_mlflow(replica, server)
    return server


@dataclass(frozen=True)
class TrackingRestart:
    """What `restart-tracking` did: processes of the old server stopped, the new server."""

    stopped: int
    server: Part


def restart_tracking(directory: Path) -> TrackingRestart:
    """`stop-tracking`, then `start-tracking`: the same port, store and artifact destination."""
    stopped = stop_tracking(directory)
    return TrackingRestart(stopped, start_tracking(directory))
