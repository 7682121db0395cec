"""The replica's typed state, what DIR/state.json holds, and the lock a changing command takes.

Every other module of the replica reads and writes its state through `Replica` and `Part`;
`LocalClusterError` is the one error a user sees (one line, exit code 2).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.storage import write_text_atomically

STATE_FILE, TOKEN_FILE, LOG_DIR, MLFLOW_DB = "state.json", "auth_token", "logs", "mlflow.db"
LOCK_FILE = ".lock"


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

    def part(self, name: str) -> Part | None:
        """The part recorded under `name`, None if none is."""
        return next((part for part in self.parts if part.name == name), None)

    def record(self, part: Part) -> None:
        """Record `part`, in the place of a part of the same name (a restart) if there is one."""
        names = [recorded.name for recorded in self.parts]
        if part.name in names:
            self.parts[names.index(part.name)] = part
        else:
            self.parts.append(part)

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
    with open(directory / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
