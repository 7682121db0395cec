"""The local replica of the cluster (tools/local_cluster.py) as a module-scoped fixture.

A test module uses it by importing the fixture function (which registers the fixture
`local_cluster` in that module):

    from helpers.local_cluster import local_cluster_fixture  # noqa: F401

The fixture IS the user's command: `python tools/local_cluster.py up` in a subprocess whose
environment holds no AWS_* or MLFLOW_* variable, and `down` afterwards, followed by a check by
PID that nothing it started is left. One replica per module: it takes about a minute to start.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .jobs import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "local_cluster.py"
DROPPED_PREFIXES = ("AWS_", "MLFLOW_")
DROPPED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass(frozen=True)
class LocalCluster:
    """A running replica: its folder, what `up` recorded, and the user's exports."""

    directory: Path
    state: dict
    exports: dict[str, str]

    @property
    def dashboard_url(self) -> str:
        return self.exports["RAY_API_SERVER_ADDRESS"]

    @property
    def mlflow_url(self) -> str:
        return self.exports["MLFLOW_TRACKING_URI"]

    @property
    def s3_url(self) -> str:
        return self.exports["AWS_ENDPOINT_URL"]

    @property
    def bucket(self) -> str:
        return self.state["bucket"]

    @property
    def environment(self) -> dict[str, str]:
        """A user's shell after pasting the exports (the venv first on PATH)."""
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**clean_environment(), **self.exports, "PATH": path}

    def run(self, command: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a command from the repository root with the exports, as a user would."""
        return subprocess.run(
            list(command),
            cwd=REPO_ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def tool(self, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`python tools/local_cluster.py <arguments> --dir <this replica's folder>`."""
        command = [sys.executable, str(TOOL), *arguments, "--dir", str(self.directory)]
        return subprocess.run(
            command, env=clean_environment(), capture_output=True, text=True, timeout=timeout
        )


def clean_environment() -> dict[str, str]:
    """This process's environment without storage, tracking or Ray address settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(DROPPED_PREFIXES) and key not in DROPPED
    }


def parse_exports(text: str) -> dict[str, str]:
    """`export KEY=VALUE` lines (as `env` prints them, shell-quoted) into a dict."""
    exports = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            exports[key] = shlex.split(value)[0] if value else ""
    return exports


def live_processes_of(directory: Path) -> set[int]:
    """PIDs (not zombies) whose environment mentions the replica's folder: every process the
    tool started carries its marker there. This process is excluded."""
    needle = f"{directory}/".encode()
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            if needle in (proc / "environ").read_bytes() and int(proc.name) != os.getpid():
                found.add(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def is_running(pid: int) -> bool:
    """os.kill(pid, 0) succeeds, and the process is no zombie (orphans may never be reaped
    where PID 1 is not an init that reaps them, as in containers)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


def recorded_pids(state: dict) -> set[int]:
    return {part["pid"] for part in state["parts"]}


@pytest.fixture(scope="module", name="local_cluster")
def local_cluster_fixture() -> Iterator[LocalCluster]:
    """Start a 3-node replica with the user's command; bring it down after the module."""
    # Short: Ray's socket paths under each node's temp dir must stay under 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="lc-", dir="/tmp"))
    up = subprocess.run(
        [sys.executable, str(TOOL), "up", "--nodes", "3", "--dir", str(directory)],
        cwd=REPO_ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    state_file = directory / "state.json"
    started: set[int] = set()
    try:
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads(state_file.read_text())
        cluster = LocalCluster(directory, state, parse_exports(up.stdout))
        yield cluster
        state = json.loads(state_file.read_text())  # tests may have added nodes
        started = recorded_pids(state) | live_processes_of(directory)
    finally:
        if state_file.exists():
            down = subprocess.run(
                [sys.executable, str(TOOL), "down", "--dir", str(directory)],
                env=clean_environment(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert down.returncode == 0, f"down failed:\n{down.stdout}\n{down.stderr}"
        left = {pid for pid in started if is_running(pid)} | live_processes_of(directory)
        shutil.rmtree(directory, ignore_errors=True)
        assert not left, f"processes of the local cluster still running after down: {left}"
