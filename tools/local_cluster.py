"""A local replica of the cluster on one machine: Ray nodes, an S3 server and MLflow.

    python tools/local_cluster.py up [--nodes 3] [--dir DIR]   start it, print the exports
    python tools/local_cluster.py env [--dir DIR]              only the export lines (for eval)
    python tools/local_cluster.py status | add-node | kill-node INDEX | down   [--dir DIR]

It mirrors cluster.yaml's roles: a Ray head that runs no training (`--num-cpus 0`, resource
`apcnet_head_node`) and worker nodes carrying `apcnet_worker_node: 1`, so training workers are
pinned one per node with `scaling.resources_per_worker`. S3 is moto's server (the bucket lives
in memory: it is gone after `down`); MLflow is a tracking server that proxies artifacts into
the bucket, so clients need no storage credentials. Ray keeps token authentication on with the
replica's own token (DIR/auth_token; ~/.ray/auth_token is never touched). The Ray nodes start
WITHOUT any AWS_* or MLFLOW_* variable: a job gets them through its runtime_env, as it must on
the real cluster.

Each part is recorded in DIR/state.json as soon as it starts, so `down` also stops a
half-started replica. Every long-running process gets its own session. `ray start --block`'s
daemons stay in its session, but Ray's core workers take process groups of their own and job
drivers sessions of their own; they are found by a marker variable every process of a part
inherits (APCNET_LOCAL_CLUSTER_PART), never by name. Servers listen on 127.0.0.1, except Ray's
internal gRPC ports, which Ray 2.60 binds on every interface whatever the node address (they
require the token).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.storage import apcnet_home, write_text_atomically

HEAD_RESOURCE = "apcnet_head_node"
WORKER_RESOURCE = "apcnet_worker_node"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MARKER_VARIABLE = "APCNET_LOCAL_CLUSTER_PART"
# Kept out of every part: storage and tracking reach jobs through their runtime_env only, and
# a user's own Ray address or token must not redirect the replica.
DROPPED_ENV_PREFIXES = ("AWS_", "MLFLOW_")
DROPPED_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
STATE_FILE, TOKEN_FILE, LOG_DIR, MLFLOW_DB = "state.json", "auth_token", "logs", "mlflow.db"
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
STOP_GRACE_S = 5.0
START_TIMEOUT_S = {"s3": 60.0, "mlflow": 240.0, "node": 180.0}


class LocalClusterError(Exception):
    """A problem the user can act on; printed as one line, exit code 2."""


@dataclass(frozen=True)
class Part:
    """One process this tool started in its own session: a Ray node (`n0` = the head, `n1`,
    ...), `s3` or `mlflow`. `start_ticks` (from /proc) tells it from a later process that
    reuses the PID; `ports` maps the command-line flag to the port given."""

    name: str
    pid: int
    start_ticks: int
    log: str
    ports: dict[str, int]

    @property
    def is_node(self) -> bool:
        return self.name[:1] == "n" and self.name[1:].isdigit()


@dataclass
class Replica:
    """Everything one folder's replica runs (or ran): exactly what state.json holds."""

    directory: str
    bucket: str
    cpus_per_node: int
    object_store_mb: int
    gcs_port: int
    dashboard_port: int
    s3_port: int
    mlflow_port: int
    parts: list[Part] = field(default_factory=list)

    @property
    def nodes(self) -> list[Part]:
        return [part for part in self.parts if part.is_node]

    def ports_given(self) -> set[int]:
        own = {self.gcs_port, self.dashboard_port, self.s3_port, self.mlflow_port}
        return own.union(*(part.ports.values() for part in self.parts))

    @property
    def token_path(self) -> str:
        return str(Path(self.directory) / TOKEN_FILE)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def save_state(replica: Replica) -> None:
    write_text_atomically(Path(replica.directory) / STATE_FILE, json.dumps(asdict(replica)))


def load_state(directory: Path) -> Replica | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Replica(**{**raw, "parts": [Part(**part) for part in raw["parts"]]})


def require_replica(directory: Path) -> Replica:
    replica = load_state(directory)
    if replica is None:
        raise LocalClusterError(f"no local cluster in {directory} (start one with `up`)")
    return replica


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One command at a time changes a replica (two `up`s in one folder would clash)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- processes, found through /proc -----------------------------------------------------------


@dataclass(frozen=True)
class ProcessEntry:
    ppid: int
    session: int
    state: str
    start_ticks: int


def process_table() -> dict[int, ProcessEntry]:
    """Every process now running, from /proc/<pid>/stat."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            entry = ProcessEntry(int(fields[1]), int(fields[3]), fields[0], int(fields[19]))
            table[int(stat.parent.name)] = entry
    return table


def is_alive(pid: int, table: dict[int, ProcessEntry], start_ticks: int | None = None) -> bool:
    """Running, and the recorded process when `start_ticks` is given. Zombies count as gone:
    where PID 1 reaps no orphans (containers), a stopped process stays a zombie for good."""
    entry = table.get(pid)
    if entry is None or entry.state in ("Z", "X"):
        return False
    return start_ticks is None or entry.start_ticks == start_ticks


def marked_processes(markers: list[str]) -> set[int]:
    """PIDs whose environment holds MARKER_VARIABLE=<one of `markers`>."""
    needles = [f"{MARKER_VARIABLE}={marker}\0".encode() for marker in markers]
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            content = environ.read_bytes()
            if any(needle in content for needle in needles):
                found.add(int(environ.parent.name))
    return found


def processes_of(replica: Replica, parts: list[Part]) -> set[int]:
    """Every live process of `parts`: the ones started, their sessions, every process carrying
    a part's marker (core workers, job drivers), and all their descendants; never this
    process or its ancestors."""
    table = process_table()
    roots = marked_processes([f"{replica.directory}/{part.name}" for part in parts])
    for part in parts:
        if is_alive(part.pid, table, part.start_ticks) or not is_alive(part.pid, table):
            # A live session id is never given to a new process; a reused PID leads another.
            roots |= {pid for pid, entry in table.items() if entry.session == part.pid}
    children: dict[int, list[int]] = {}
    for pid, entry in table.items():
        children.setdefault(entry.ppid, []).append(pid)
    found, pending = set(), list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    pid = os.getpid()
    while pid in table and pid > 1:
        found.discard(pid)
        pid = table[pid].ppid
    return {pid for pid in found if is_alive(pid, table)}


def stop_parts(replica: Replica, parts: list[Part], grace_s: float) -> int:
    """SIGTERM every process of `parts` (SIGKILL when `grace_s` is 0), wait up to `grace_s`,
    then SIGKILL what is left, found again each round (a dying raylet may still start a
    worker). Returns how many processes it stopped."""

    def send(pids: set[int], signum: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    stopped = processes_of(replica, parts)
    send(stopped, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while (left := processes_of(replica, parts)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(20):
        if not left:
            return len(stopped)
        stopped = stopped | left
        send(left, signal.SIGKILL)
        time.sleep(0.2)
        left = processes_of(replica, parts)
    raise LocalClusterError(f"processes {sorted(left)} survived SIGKILL: stop them by hand")


def alive_parts(replica: Replica) -> list[str]:
    table = process_table()
    return [p.name for p in replica.parts if is_alive(p.pid, table, p.start_ticks)]


# --- starting the parts -----------------------------------------------------------------------


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


def start_part(
    replica: Replica, name: str, command: list[str], ports: dict[str, int], **env: str
) -> Part:
    """Start `command` in a session of its own and record it in the state file at once.

    Its environment is ours without AWS_*, MLFLOW_* and Ray addresses, plus `env` and the
    part's marker; the venv's bin comes first on PATH (`ray job submit` runs the job's
    `python` from the environment `ray start` ran in)."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(DROPPED_ENV_PREFIXES) and key not in DROPPED_ENV
    }
    kept["PATH"] = f"{VENV_BIN}{os.pathsep}{kept.get('PATH', '')}"
    kept |= {**env, MARKER_VARIABLE: f"{replica.directory}/{name}"}
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
    replica.parts.append(part)
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
    """MLflow's server: runs in SQLite in the folder, artifacts proxied into the bucket (the
    server holds the storage credentials). Not waited for: its ~20 s start overlaps Ray's."""
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
    return start_part(replica, "mlflow", command, {"port": replica.mlflow_port}, **env)


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
    Ray only counts them to place work, which is what the replica has to mirror."""
    index = len(replica.nodes)
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
    part = start_part(replica, f"n{index}", command, ports, **env)
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


# --- commands ---------------------------------------------------------------------------------


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
                f"bring it down first with `python tools/local_cluster.py down --dir {directory}`"
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
        health = f"{replica.mlflow_url}/health"
        wait_until(server, START_TIMEOUT_S["mlflow"], lambda: http_status(health) == 200)
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


def kill_node(directory: Path, index: int) -> int:
    """SIGKILL every process of worker node `index` at once, as if its machine vanished."""
    replica = require_replica(directory)
    if not 0 < index < len(replica.nodes):
        raise LocalClusterError(
            f"no worker node {index} (workers: 1 to {len(replica.nodes) - 1}; node 0, the "
            "head, holds the GCS and the job drivers)"
        )
    return stop_parts(replica, [replica.nodes[index]], grace_s=0.0)


def job_env(replica: Replica) -> dict[str, str]:
    """What a job needs to reach storage and tracking: its runtime_env's env_vars."""
    endpoint = {"AWS_ENDPOINT_URL": replica.s3_url, "AWS_ENDPOINT_URL_S3": replica.s3_url}
    return {"MLFLOW_TRACKING_URI": replica.mlflow_url, **endpoint, **DUMMY_AWS}


def export_lines(replica: Replica) -> str:
    """The shell exports, plus RUNTIME_ENV_JSON (a plain shell variable) for jobs. RAY_ADDRESS
    is the GCS address (`ray status` and `ray.init()` refuse an http:// URL); the job CLI and
    the State API take RAY_API_SERVER_ADDRESS, the dashboard URL, first."""
    ray = {"RAY_ADDRESS": f"127.0.0.1:{replica.gcs_port}"}
    ray |= {"RAY_API_SERVER_ADDRESS": replica.dashboard_url, "RAY_AUTH_MODE": "token"}
    ray |= {"RAY_AUTH_TOKEN_PATH": replica.token_path}
    variables = {**ray, **job_env(replica)}
    lines = [f"export {key}={shlex.quote(value)}" for key, value in variables.items()]
    runtime_env = shlex.quote(json.dumps({"env_vars": job_env(replica)}))
    lines.append(f"RUNTIME_ENV_JSON={runtime_env}  # for: ray job submit --runtime-env-json")
    return "\n".join([*lines, f"# bucket: s3://{replica.bucket}"])


def train_command(replica: Replica) -> str:
    """`ray job submit` for training on the replica, one worker per worker node."""
    runtime_env = shlex.quote(json.dumps({"env_vars": job_env(replica)}))
    return (
        f"ray job submit --working-dir . --runtime-env-json {runtime_env} -- python jobs/train.py"
        f" --set data.path=s3://{replica.bucket}/shards/synthetic"
        f" --set checkpointing.storage_path=s3://{replica.bucket}/runs"
        f" --set scaling.num_workers={len(replica.nodes) - 1}"
        f" --set 'scaling.resources_per_worker={{CPU: 1, {WORKER_RESOURCE}: 1}}'"
    )


def status_lines(replica: Replica) -> list[str]:
    alive = set(alive_parts(replica))
    lines = [f"local cluster in {replica.directory}"]
    for part in replica.parts:
        if part.name == "n0":
            where = f"gcs 127.0.0.1:{replica.gcs_port}, dashboard {replica.dashboard_url}"
        elif part.is_node:
            where = f"worker node, {replica.cpus_per_node} CPUs"
        else:
            where = replica.s3_url if part.name == "s3" else replica.mlflow_url
            where += f", bucket s3://{replica.bucket}" if part.name == "s3" else ""
        state = "alive" if part.name in alive else "DEAD "
        lines.append(f"{part.name:<7}{state}  pid {part.pid:<8} {where}")
    return lines


def up_report(replica: Replica) -> str:
    command = f"python tools/local_cluster.py {{}} --dir {shlex.quote(replica.directory)}"
    return "\n".join(
        [
            *status_lines(replica),
            f'\nExports (or: eval "$({command.format("env")})"):',
            export_lines(replica),
            f"\nThe bucket s3://{replica.bucket} lives in memory: it is gone after `down`.",
            "Train on it (from the repository root, with the exports):",
            train_command(replica),
            f"\nBring it down: {command.format('down')}",
        ]
    )


def run_command(args: argparse.Namespace, directory: Path) -> int:
    if args.command == "up":
        replica = up(directory, args.nodes, args.cpus_per_node, args.object_store_mb, args.bucket)
        print(up_report(replica))
    elif args.command == "env":
        print(export_lines(require_replica(directory)))
    elif args.command == "status":
        replica = require_replica(directory)
        print("\n".join(status_lines(replica)))
        return 0 if len(alive_parts(replica)) == len(replica.parts) else 1
    elif args.command == "add-node":
        node = start_ray_node(require_replica(directory))
        print(f"{node.name} started (pid {node.pid})")
    elif args.command == "kill-node":
        print(f"n{args.index}: {kill_node(directory, args.index)} processes killed")
    else:
        print(f"local cluster in {directory} down: {down(directory)} processes stopped")
    return 0


COMMANDS = {
    "up": "start the replica (S3, MLflow, Ray nodes) and print the exports",
    "env": 'print the export lines only: eval "$(python tools/local_cluster.py env)"',
    "status": "say which parts run (exit code 1 if any is down)",
    "add-node": "start one more Ray worker node",
    "kill-node": "SIGKILL every process of one worker node, as if its machine vanished",
    "down": "stop every process the replica started",
}


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
            default=apcnet_home() / "local-cluster",
            help="the replica's folder (default: $APCNET_HOME/local-cluster; keep it short)",
        )
        if name == "up":
            add = command.add_argument
            add("--nodes", type=int, default=3, help="Ray nodes, head included (default 3)")
            add("--cpus-per-node", type=int, default=2, help="logical CPUs per worker node (2)")
            add("--object-store-mb", type=int, default=256, help="object store per node, MB (256)")
            add("--bucket", default="apcnet", help="the S3 bucket's name (default apcnet)")
        if name == "kill-node":
            command.add_argument("index", type=int, help="a worker node's index (1, 2, ...)")
    args = parser.parse_args(argv)
    directory = args.dir.expanduser().resolve()
    read_only = args.command in ("env", "status")  # no waiting for an `up` in progress
    try:
        with contextlib.nullcontext() if read_only else locked(directory):
            return run_command(args, directory)
    except LocalClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
