"""A local replica of the cluster on one machine: Ray nodes, an S3 server and MLflow.

    python tools/local_cluster.py up [--nodes 3] [--dir DIR]   start it, print the exports
    python tools/local_cluster.py env [--dir DIR]              only the export lines (for eval)
    python tools/local_cluster.py status | add-node | kill-node INDEX | down   [--dir DIR]
    python tools/local_cluster.py preempt-node INDEX --deadline-s SECONDS   [--dir DIR]
    python tools/local_cluster.py stop-tracking | start-tracking | restart-tracking   [--dir DIR]

It mirrors cluster.yaml's roles: a Ray head that runs no training (`--num-cpus 0`, resource
`apcnet_head_node`) and worker nodes carrying `apcnet_worker_node: 1`, so training workers are
pinned one per node with `scaling.resources_per_worker`. S3 is moto's server (the bucket lives
in memory: it is gone after `down`); MLflow is a tracking server that proxies artifacts into
the bucket, so clients need no storage credentials. Ray keeps token authentication on with the
replica's own token (DIR/auth_token; ~/.ray/auth_token is never touched). The Ray nodes start
WITHOUT any AWS_* or MLFLOW_* variable: a job gets them through its runtime_env, as it must on
the real cluster. The MLflow server can be stopped and started again (same port, same SQLite
store, same artifact destination) while a job runs, to test a job's tracking through an outage.
`preempt-node` is a spot VM's reclaim with notice: Ray is told the node will be preempted
(`ray drain-node`, reason preemption, with the deadline; Ray stops the raylet of a node with
nothing running at once), and the node is killed as by `kill-node` when the deadline comes;
the folder stays unlocked meanwhile, so `add-node` can bring a replacement during the notice.
Ray records the node dead for preemption.

Each part is recorded in DIR/state.json as soon as it starts, so `down` also stops a
half-started replica. Every long-running process gets its own session. `ray start --block`'s
daemons stay in its session, but Ray's core workers take process groups of their own and job
drivers sessions of their own; they are found by a marker variable every process of a part
inherits (APCNET_LOCAL_CLUSTER_PART), never by name. Servers listen on 127.0.0.1, except Ray's
internal gRPC ports, which Ray 2.60 binds on every interface whatever the node address (they
require the token).

The work is done by the package tools/replica/ beside this file; this file is the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from replica.operations import (
    add_node,
    down,
    end_preemption,
    give_preemption_notice,
    kill_node,
    restart_tracking,
    start_tracking,
    stop_tracking,
    up,
)
from replica.processes import alive_parts
from replica.report import export_lines, status_lines, up_report
from replica.state import LocalClusterError, locked, require_replica

from pipeline.storage import apcnet_home

COMMANDS = {
    "up": "start the replica (S3, MLflow, Ray nodes) and print the exports",
    "env": 'print the export lines only: eval "$(python tools/local_cluster.py env)"',
    "status": "say which parts run (exit code 1 if any is down)",
    "add-node": "start one more Ray worker node",
    "kill-node": "SIGKILL every process of one worker node, as if its machine vanished",
    "preempt-node": "tell Ray a worker node will be preempted, then kill it at the deadline",
    "stop-tracking": "stop the MLflow server (its runs stay in the folder's SQLite store)",
    "start-tracking": "start the stopped MLflow server again on the same port and store",
    "restart-tracking": "stop the MLflow server and start it again on the same port and store",
    "down": "stop every process the replica started",
}
DEFAULT_DIRECTORY = apcnet_home() / "local-cluster"
READ_ONLY = ("env", "status")  # no waiting for an `up` in progress
LOCKS_ITSELF = ("preempt-node",)  # not while it waits for the deadline


def killed_line(index: int, killed: int) -> str:
    """What `kill-node` prints, and `preempt-node` at its deadline."""
    return f"n{index}: {killed} processes killed"


def preempt_node(directory: Path, index: int, deadline_s: int) -> None:
    """Give the notice, wait for its deadline without the folder's lock, kill the node;
    prints a line when Ray accepted the drain and `kill-node`'s line after the kill."""
    with locked(directory):
        notice = give_preemption_notice(directory, index, deadline_s)
    print(
        f"{notice.node.name} (node {notice.node_id[:8]}) draining for preemption: killed in "
        f"{deadline_s} s",
        flush=True,  # a caller reading our output learns of the drain before the kill
    )
    time.sleep(max(0.0, notice.deadline - time.monotonic()))
    with locked(directory):
        print(killed_line(index, end_preemption(directory, notice)))


def run_command(args: argparse.Namespace, directory: Path) -> int:
    if args.command == "up":
        replica = up(directory, args.nodes, args.cpus_per_node, args.object_store_mb, args.bucket)
        default = directory == DEFAULT_DIRECTORY.expanduser().resolve()
        print(up_report(replica, default_directory=default))
    elif args.command == "env":
        print(export_lines(require_replica(directory)))
    elif args.command == "status":
        replica = require_replica(directory)
        print("\n".join(status_lines(replica)))
        return 0 if len(alive_parts(replica)) == len(replica.parts) else 1
    elif args.command == "add-node":
        node = add_node(directory)
        print(f"{node.name} started (pid {node.pid})")
    elif args.command == "kill-node":
        print(killed_line(args.index, kill_node(directory, args.index)))
    elif args.command == "preempt-node":
        preempt_node(directory, args.index, args.deadline_s)
    elif args.command == "stop-tracking":
        print(f"mlflow stopped: {stop_tracking(directory)} processes stopped")
    elif args.command == "start-tracking":
        server = start_tracking(directory)
        print(f"mlflow started on port {server.ports['port']} (pid {server.pid})")
    elif args.command == "restart-tracking":
        restart = restart_tracking(directory)
        server = restart.server
        print(
            f"mlflow restarted on port {server.ports['port']} (pid {server.pid}): "
            f"{restart.stopped} processes stopped"
        )
    else:
        print(f"local cluster in {directory} down: {down(directory)} processes stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, purpose in COMMANDS.items():
        command = commands.add_parser(name, help=purpose, description=purpose)
        command.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIRECTORY,
            help="the replica's folder (default: $APCNET_HOME/local-cluster; keep it short)",
        )
        if name == "up":
            add = command.add_argument
            add("--nodes", type=int, default=3, help="Ray nodes, head included (default 3)")
            add("--cpus-per-node", type=int, default=2, help="logical CPUs per worker node (2)")
            add("--object-store-mb", type=int, default=256, help="object store per node, MB (256)")
            add("--bucket", default="apcnet", help="the S3 bucket's name (default apcnet)")
        if name in ("kill-node", "preempt-node"):
            command.add_argument("index", type=int, help="a worker node's index (1, 2, ...)")
        if name == "preempt-node":
            command.add_argument(
                "--deadline-s",
                type=int,
                required=True,
                help="seconds of notice between the drain and the kill (a cloud's reclaim "
                "notice: 30 s on GCP, 120 s on AWS)",
            )
    args = parser.parse_args(argv)
    directory = args.dir.expanduser().resolve()
    try:
        unlocked = args.command in READ_ONLY + LOCKS_ITSELF
        with contextlib.nullcontext() if unlocked else locked(directory):
            return run_command(args, directory)
    except LocalClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
