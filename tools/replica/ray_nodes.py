"""The replica's Ray nodes as Ray sees them, through Ray's own CLI run with the replica's
address and token (`ray_client_env`): the Ray node id of a node part, found by the label every
node starts with (NODE_LABEL), and draining a node ahead of its preemption.

`ray drain-node` is the one way outside Ray's autoscaler to tell Ray a node is about to be
preempted; its help calls it developer-facing and outside Ray's API stability guarantees
(added as "NOT a public api" in ray-project/ray#43189; ray-project/ray#46367 asks for a
supported way to replicate spot preemptions), so a Ray upgrade has to check it and the
reason's spelling.
"""

from __future__ import annotations

import json
import subprocess

from replica.parts import NODE_LABEL, VENV_BIN, clean_environment
from replica.report import ray_client_env
from replica.state import LocalClusterError, Replica

CLI_TIMEOUT_S = 120.0
PREEMPTION_REASON = "DRAIN_NODE_REASON_PREEMPTION"


def run_ray(replica: Replica, what: str, *arguments: str) -> str:
    """`ray <arguments>` with the replica's address and token; returns its standard output.
    Fails in one line that says `what` was being done and the CLI's last line of error."""
    command = [str(VENV_BIN / "ray"), *arguments]
    environment = {**clean_environment(), **ray_client_env(replica)}
    try:
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        raise LocalClusterError(f"{what}: no answer in {CLI_TIMEOUT_S:.0f} s") from error
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise LocalClusterError(f"{what} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def listed_nodes(replica: Replica) -> list[dict]:
    """Every node the cluster knows, dead ones included, as `ray list nodes` gives them (the
    State API's NodeState fields: node_id, state, labels, ...)."""
    output = run_ray(replica, "listing the Ray nodes", "list", "nodes", "--format=json")
    lines = output.strip().splitlines()
    # An empty listing is a sentence ("No resource in the cluster"), not JSON.
    return json.loads(lines[-1]) if lines and lines[-1].startswith("[") else []


def node_id_of(nodes: list[dict], name: str) -> str:
    """The id of the live Ray node labelled NODE_LABEL=`name` among `nodes` (rows of `ray list
    nodes`); a LocalClusterError if Ray has it dead or does not list it."""
    labelled = [node for node in nodes if node.get("labels", {}).get(NODE_LABEL) == name]
    alive = [node["node_id"] for node in labelled if node["state"] == "ALIVE"]
    if len(alive) == 1:
        return alive[0]
    if alive:
        raise LocalClusterError(f"Ray lists {len(alive)} live nodes labelled {NODE_LABEL}={name}")
    if labelled:
        raise LocalClusterError(f"Ray has {name} dead (node {labelled[-1]['node_id'][:8]})")
    raise LocalClusterError(
        f"Ray lists no node labelled {NODE_LABEL}={name} (nodes started by an older version "
        "of this tool carry no label: bring the replica down and up)"
    )


def drain_for_preemption(replica: Replica, node_id: str, message: str, deadline_s: int) -> None:
    """Tell Ray that node `node_id` will be preempted in `deadline_s` seconds (`ray drain-node
    --reason DRAIN_NODE_REASON_PREEMPTION`), as a cloud's reclaim notice would through Ray's
    autoscaler. A node with nothing running stops its raylet at once; a busy one runs on, and
    the caller kills it at the deadline. Either way Ray records the node's death as
    AUTOSCALER_DRAIN_PREEMPTED with `message`. A LocalClusterError if Ray refuses the drain."""
    run_ray(
        replica,
        f"draining node {node_id[:8]}",
        "drain-node",
        f"--node-id={node_id}",
        f"--reason={PREEMPTION_REASON}",
        f"--reason-message={message}",
        f"--deadline-remaining-seconds={deadline_s}",
    )
