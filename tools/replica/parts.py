"""Starting the replica's parts: the S3 server, the MLflow server and Ray nodes.

Each part starts in a session of its own, is recorded in the state file at once (so `down`
also stops a half-started replica), and is waited for until it answers. Also here: the ports
the parts get, the replica's Ray token, and clearing what a stopped replica left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from replica.processes import MARKER_VARIABLE, is_alive, marker, process_table
from replica.state import (
    LOG_DIR,
    MLFLOW_DB,
    STATE_FILE,
    TOKEN_FILE,
    LocalClusterError,
    Part,
    Replica,
    save_state,
)

HEAD_RESOURCE = "apcnet_head_node"
WORKER_RESOURCE = "apcnet_worker_node"
# Every Ray node carries NODE_LABEL=<its part's name> (n0, n1, ...): how the replica finds a
# part's Ray node id (nodes on one host share their IP; Ray lists labels, not our PIDs).
NODE_LABEL = "apcnet_replica_node"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TRACKING_PART = "mlflow"
# Kept out of every part: storage and tracking reach jobs through their runtime_env only, and
# a user's own Ray address or token must not redirect the replica.
DROPPED_ENV_PREFIXES = ("AWS_", "MLFLOW_")
DROPPED_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
# Ray's socket paths (<temp dir>/session_<date>_<pid>/sockets/plasma_store) must stay under
# 107 bytes; the part below the node's temp dir takes up to 64 of them.
MAX_NODE_DIR_CHARS = 43
NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = {"s3": 60.0, "mlflow": 240.0, "node": 180.0}


def free_ports(count: int, taken: set[int]) -> list[int]:
    """`count` distinct ports that nothing listens on now and that are not `taken` (given to
    a part that has not bound them yet): the system's picks for port 0, held together."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:
            probe = stack.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            if (port := probe.getsockname()[1]) not in taken:
                ports.append(port)
    return ports


def require_port_free(port: int, user: str) -> None:
    """Fail before starting `user` on `port` if another process listens there already."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise LocalClusterError(
                f"port {port} for {user} is taken by another process ({error.strerror})"
            ) from error


def clean_environment() -> dict[str, str]:
    """Our environment without AWS_*, MLFLOW_* and the user's Ray address or token."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(DROPPED_ENV_PREFIXES) and key not in DROPPED_ENV
    }


def start_part(
    replica: Replica, name: str, command: list[str], ports: dict[str, int], **env: str
) -> Part:
    """Start `command` in a session of its own and record it in the state file at once (in
    the place of a stopped part of the same name, if one is recorded).

    Its environment is `clean_environment()` plus `env` and the part's marker; the venv's bin
    comes first on PATH (`ray job submit` runs the job's `python` from the environment `ray
    start` ran in)."""
    kept = clean_environment()
    kept["PATH"] = f"{VENV_BIN}{os.pathsep}{kept.get('PATH', '')}"
    kept |= {**env, MARKER_VARIABLE: marker(replica, name)}
    log = Path(replica.directory) / LOG_DIR / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            env=kept,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    entry = process_table().get(process.pid)
    part = Part(name, process.pid, entry.start_ticks if entry else 0, str(log), ports)
    replica.record(part)
    save_state(replica)
    return part


def wait_until(part: Part, timeout_s: float, ready: Callable[[], bool]) -> None:
    """Poll `ready()`; fail with the log's tail as soon as the part's process exits."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not is_alive(part.pid, process_table(), part.start_ticks):
            tail = Path(part.log).read_text(errors="replace")[-3000:]
            raise LocalClusterError(f"{part.name} exited while starting ({part.log}):\n{tail}")
        if time.monotonic() > deadline:
            raise LocalClusterError(f"{part.name} not ready in {timeout_s:.0f} s ({part.log})")
        time.sleep(0.5)


def http_status(url: str) -> int | None:
    """The HTTP status `url` answers with, None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def start_s3(replica: Replica) -> None:
    """moto's S3 server, with the replica's bucket created through boto3."""
    import boto3

    port = replica.s3_port
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    part = start_part(replica, "s3", command, {"port": port})
    wait_until(part, START_TIMEOUT_S["s3"], lambda: http_status(replica.s3_url) is not None)
    options = {key.lower(): value for key, value in DUMMY_AWS.items()}
    options["region_name"] = options.pop("aws_default_region")
    client = boto3.client("s3", endpoint_url=replica.s3_url, **options)
    client.create_bucket(Bucket=replica.bucket)


def start_mlflow(replica: Replica) -> Part:
    """MLflow's server on the replica's port: runs in SQLite in the folder, artifacts proxied
    into the bucket (the server holds the storage credentials). Not waited for (see
    `wait_for_mlflow`): at `up`, its ~20 s start overlaps Ray's."""
    database = Path(replica.directory) / MLFLOW_DB
    command = [
        str(VENV_BIN / "mlflow"),
        "server",
        *f"--host 127.0.0.1 --port {replica.mlflow_port} --workers 1 --serve-artifacts".split(),
        f"--backend-store-uri=sqlite:///{database}",
        f"--artifacts-destination=s3://{replica.bucket}/mlflow",
    ]
    env = {"MLFLOW_S3_ENDPOINT_URL": replica.s3_url, **DUMMY_AWS}
    # cluster.yaml's setting too: no background job runner beside the server.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return start_part(replica, TRACKING_PART, command, {"port": replica.mlflow_port}, **env)


def wait_for_mlflow(replica: Replica, server: Part) -> None:
    """Return once the MLflow server answers /health with 200."""
    health = f"{replica.mlflow_url}/health"
    wait_until(server, START_TIMEOUT_S["mlflow"], lambda: http_status(health) == 200)


def node_temp_dir(directory: Path, index: int) -> Path:
    """Node `index`'s own Ray temp dir (nodes sharing one broke submitted jobs here)."""
    temp_dir = directory / f"n{index}"
    if len(str(temp_dir)) > MAX_NODE_DIR_CHARS:
        raise LocalClusterError(
            f"{directory} is too long for Ray's socket paths (at most "
            f"{MAX_NODE_DIR_CHARS - 4} characters): pass a shorter --dir, e.g. /tmp/apcnet-cluster"
        )
    return temp_dir


def start_ray_node(replica: Replica) -> Part:
    """`ray start --block` for the next node (the first is the head); returns once it runs.

    Worker nodes get `cpus_per_node` logical CPUs each, more than the machine may have cores:
    Ray only counts them to place work, which is what the replica has to mirror. Every node
    carries the label NODE_LABEL=<its part's name> (`--labels`: hidden from `ray start --help`
    in 2.60, documented on Ray's "Use labels to control scheduling" page)."""
    index = len(replica.nodes)
    name = f"n{index}"
    temp_dir = node_temp_dir(Path(replica.directory), index)
    flags = [*NODE_PORT_FLAGS, *(["ray-client-server-port"] if index == 0 else [])]
    ports = dict(zip(flags, free_ports(len(flags), replica.ports_given()), strict=True))
    if index == 0:
        ports |= {"port": replica.gcs_port, "dashboard-port": replica.dashboard_port}
        role = ["--head", "--num-cpus=0", f"--resources={json.dumps({HEAD_RESOURCE: 1})}"]
        role += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    else:
        role = [f"--address=127.0.0.1:{replica.gcs_port}", f"--num-cpus={replica.cpus_per_node}"]
        role += [f"--resources={json.dumps({WORKER_RESOURCE: 1})}"]
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--block",
        "--min-worker-port=0",  # core workers: any free port
        "--max-worker-port=0",
        *role,
        f"--labels={NODE_LABEL}={name}",
        *(f"--{flag}={port}" for flag, port in ports.items()),
        f"--object-store-memory={replica.object_store_mb * 1024 * 1024}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--log-color=false",
    ]
    # RAY_API_SERVER_ADDRESS: the State API inside the cluster (Train's placement-group
    # cleaner) finds this dashboard instead of guessing among other Ray instances here.
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": replica.token_path}
    env["RAY_API_SERVER_ADDRESS"] = replica.dashboard_url
    part = start_part(replica, name, command, ports, **env)
    log = Path(part.log)  # `ray start` prints "Ray runtime started" once the node runs
    wait_until(part, START_TIMEOUT_S["node"], lambda: "runtime started" in log.read_text())
    return part


def write_token(path: Path) -> None:
    """A fresh random token in Ray's own format (32 random bytes, hex), readable by us only."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secrets.token_hex(32))


def clear_leftovers(directory: Path) -> None:
    """Remove what a stopped replica left: Ray's node folders, logs, the MLflow database."""
    for path in directory.iterdir():
        node_dir = path.name[:1] == "n" and path.name[1:].isdigit()
        if path.is_dir() and (path.name == LOG_DIR or node_dir):
            shutil.rmtree(path)
        elif path.name in (MLFLOW_DB, TOKEN_FILE, STATE_FILE):
            path.unlink()
