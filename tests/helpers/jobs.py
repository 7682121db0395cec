"""The jobs as a user runs them: `python jobs/<job>` in a subprocess from the repository root,
or a job's main() loaded into this process.

Every job subprocess gets one environment: this process's, with APCNET_HOME set to the folder
the test gives, and MLFLOW_TRACKING_URI, RAY_ADDRESS and APCNET_VERBOSE removed (a test that
needs one passes it in `env`). So a job sees no tracking server, cluster or verbosity that
happens to be set where the suite runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

from pipeline.train.connection import free_local_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
JOBS = REPO_ROOT / "jobs"
JOB_TIMEOUT_S = 300
REMOVED_VARIABLES = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "APCNET_VERBOSE")

# Where the job's driver finds Ray: "local" starts its own instance, as a job on a laptop
# does; "shared" joins the instance this process is connected to (the `ray_session`
# fixture's); "unreachable" names a loopback port nobody listens on, so a job that reaches
# `ray.init()` fails there with a connection error.
RayMode = Literal["local", "shared", "unreachable"]


def job_environment(
    home: Path, env: Mapping[str, str] | None = None, ray: RayMode = "local"
) -> dict[str, str]:
    """The environment of a job subprocess (see the module docstring); `env` is added last."""
    environment = {key: value for key, value in os.environ.items() if key not in REMOVED_VARIABLES}
    environment["APCNET_HOME"] = str(home)
    if ray == "shared":
        import ray as ray_core

        environment["RAY_ADDRESS"] = ray_core.get_runtime_context().gcs_address
        environment["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "token")
    elif ray == "unreachable":
        environment["RAY_ADDRESS"] = f"127.0.0.1:{free_local_port()}"
    return {**environment, **(env or {})}


def run_job_process(
    job: str,
    arguments: Sequence[str],
    *,
    home: Path,
    env: Mapping[str, str] | None = None,
    ray: RayMode = "local",
    timeout: float = JOB_TIMEOUT_S,
    one_stream: bool = False,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `python jobs/<job> <arguments>` to its end and capture what it printed.

    Output is decoded as written: a carriage return stays one (text mode would turn each into
    a new line), so a progress bar's redraws are kept. With `one_stream`, stderr goes into
    stdout in the order written, as a console shows both, and `stderr` is None. With
    `check`, a non-zero exit raises CalledProcessError.
    """
    command = [sys.executable, str(Path("jobs") / job), *arguments]
    finished = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=job_environment(home, env, ray),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if one_stream else subprocess.PIPE,
        timeout=timeout,
    )
    result = subprocess.CompletedProcess(
        command,
        finished.returncode,
        finished.stdout.decode(errors="replace"),
        None if one_stream else finished.stderr.decode(errors="replace"),
    )
    if check:
        result.check_returncode()
    return result


def start_job_process(
    job: str,
    arguments: Sequence[str],
    *,
    home: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    ray: RayMode = "local",
) -> subprocess.Popen[bytes]:
    """Start `python jobs/<job> <arguments>` and return at once, its stdout and stderr going to
    the file `log`; for a test that stops the job itself."""
    with log.open("wb") as output:  # the job holds its own copy of the file
        return subprocess.Popen(
            [sys.executable, str(Path("jobs") / job), *arguments],
            cwd=REPO_ROOT,
            env=job_environment(home, env, ray),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def job_module(name: str) -> ModuleType:
    """jobs/<name>.py loaded afresh into this process, under the name `<name>_job`."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_main(name: str) -> Callable[[list[str]], int]:
    """The main() of jobs/<name>.py, to run in this process (with `jobs.cli.run_job` for the
    job's error handling)."""
    return job_module(name).main
