"""Joining the Ray cluster with the settings every worker on every node needs.

Workers on other nodes do not share the driver's environment, and Ray Train forwards only
`RAY_TRAIN_*` variables to its controller and workers. The object-store endpoint and
credentials (`AWS_*`, `GOOGLE_*`), the MLflow settings (`MLFLOW_*`) and the console settings
(`pipeline.console.logs`) therefore travel in the job's runtime_env: from `ray job submit
--runtime-env-json '{"env_vars": {...}}'`, and for a driver started by hand
(`RAY_ADDRESS=... python jobs/train.py`) from its own environment.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from pipeline.console import logs

FORWARDED_PREFIXES = ("AWS_", "GOOGLE_", "MLFLOW_")
# Where Ray's processes find the State API (the dashboard's address).
API_SERVER_ADDRESS_VARIABLE = "RAY_API_SERVER_ADDRESS"

# Set by `ray job submit` in the job's driver (the cluster's address), or by a user.
ADDRESS_VARIABLE = "RAY_ADDRESS"
# Lets a driver's runtime_env repeat variables the submitted job's runtime_env already sets
# (Ray otherwise refuses the overlap). Both hold the same values here: the job's variables are
# in the driver's own environment, from which the driver's runtime_env is built.
OVERRIDE_JOB_RUNTIME_ENV_VARIABLE = "RAY_OVERRIDE_JOB_RUNTIME_ENV"


def connect(**init_options: Any) -> None:
    """`ray.init()` unless connected: the job's cluster inside `ray job submit` or under
    RAY_ADDRESS, else a new local instance, with `init_arguments()` and `init_options`.
    Either way this process gets the console settings (`logs.quiet_this_process`)."""
    logs.quiet_this_process()
    if ray.is_initialized():
        return
    if joins_a_cluster(dict(os.environ), init_options):
        os.environ.setdefault(OVERRIDE_JOB_RUNTIME_ENV_VARIABLE, "1")
        ray.init(**init_arguments(), **init_options)
    else:
        start_local_instance(**init_options)


def start_local_instance(**init_options: Any) -> None:
    """Start a local Ray instance (with its dashboard) that its own processes can find.

    Ray Train's placement-group cleaner, a detached actor, asks the State API whether the run's
    training controller is still alive, and removes the run's placement group when it is not.
    Without an address it guesses the instance, and when several Ray instances run on one
    machine (other users' jobs, test sessions) the guess raises and the cleaner dies with a
    traceback on the console: a Tune trial that ASHA stops then never frees its workers' CPUs.
    An address inherited from the environment is worse: it names another instance, which knows
    nothing of this job's controller, so the cleaner removes the placement group while the
    workers start. So the dashboard (which serves the State API) gets a known port on the
    loopback, and its URL is put in the environment every Ray process of this instance
    inherits. `init_options` go to `ray.init` (e.g. num_cpus, _temp_dir), after the job's
    runtime_env and console options (`init_arguments`).
    """
    port = free_local_port()
    os.environ[API_SERVER_ADDRESS_VARIABLE] = f"http://127.0.0.1:{port}"
    dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    ray.init(**{**init_arguments(), **dashboard, **init_options})


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def joins_a_cluster(environment: dict[str, str], init_options: dict[str, Any]) -> bool:
    """Whether `ray.init` will join a running cluster (an address given, or RAY_ADDRESS set,
    as inside `ray job submit`) rather than start a local instance for this process."""
    return bool(init_options.get("address") or environment.get(ADDRESS_VARIABLE))


def init_arguments() -> dict[str, Any]:
    """What `ray.init` needs for this job: the runtime_env carrying `variables_for_workers()`
    and the console's logging options."""
    variables = variables_for_workers(dict(os.environ))
    runtime_env = {"env_vars": variables} if variables else None
    return {"runtime_env": runtime_env, **logs.ray_init_options()}


def variables_for_workers(environment: dict[str, str]) -> dict[str, str]:
    """The storage and tracking variables of `environment` and the console's settings."""
    forwarded = {
        name: value for name, value in environment.items() if name.startswith(FORWARDED_PREFIXES)
    }
    return forwarded | logs.variables_for_workers(environment)
