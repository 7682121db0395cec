"""MLflow's own servers on the loopback: `mlflow server` (tracking) and `mlflow models serve`
(a registered model). Each runs in a process group of its own, started here on a free port and
stopped here by the PID that started it, workers included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.train.connection import free_local_port

# The servers start uvicorn and gunicorn by name: this environment's bin folder comes first.
BIN_FOLDER = Path(sys.executable).parent


@dataclass(frozen=True)
class MlflowServer:
    """A started server: where it listens, its process (the leader of its group), its log."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def wait_until_serving(self, path: str, timeout_s: float = 180.0) -> None:
        """Return once GET <url><path> answers 200; raise if the server exits or the time runs
        out first (the log says why)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.url}: the server exited with code {self.process.returncode}; "
                    f"see {self.log}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"{self.url}{path} not answering after {timeout_s} s; see {self.log}")

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it is still there after
        `grace_s`."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def start_mlflow(
    arguments: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> MlflowServer:
    """`mlflow <arguments> --host 127.0.0.1 --port <a free port>`, its output in the file `log`,
    in its own process group. Returns at once: the server answers seconds later."""
    port = free_local_port()
    command = [str(BIN_FOLDER / "mlflow"), *arguments, "--host", "127.0.0.1", "--port", str(port)]
    path = f"{BIN_FOLDER}{os.pathsep}{os.environ.get('PATH', '')}"
    with log.open("wb") as output:  # the server holds its own copy of the file
        process = subprocess.Popen(
            command,
            env={**os.environ, "PATH": path, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    return MlflowServer(f"http://127.0.0.1:{port}", port, process, log)


def start_tracking_server(folder: Path) -> MlflowServer:
    """`mlflow server` with its SQLite store, artifacts and log in `folder`; it answers
    `wait_until_serving("/health")` once started."""
    arguments = ["server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    arguments += ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    return start_mlflow(
        arguments, folder / "server.log", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    )


def start_model_server(model_uri: str, tracking_uri: str, log: Path) -> MlflowServer:
    """`mlflow models serve` of `model_uri` (e.g. models:/NAME/1) from `tracking_uri`, in this
    environment (no virtualenv of its own); it answers `wait_until_serving("/ping")` once
    started and takes POSTs at /invocations."""
    arguments = ["models", "serve", "-m", model_uri, "--env-manager", "local"]
    return start_mlflow(arguments, log, {"MLFLOW_TRACKING_URI": tracking_uri})
