"""Joining the Ray cluster with the settings every worker on every node needs.

Workers on other nodes do not share the driver's environment, and Ray Train forwards only
`RAY_TRAIN_*` variables to its controller and workers. The object-store endpoint and
credentials (`AWS_*`, `GOOGLE_*`) and the MLflow settings (`MLFLOW_*`) therefore travel in the
job's runtime_env: from `ray job submit --runtime-env-json '{"env_vars": {...}}'`, and for a
driver started by hand (`RAY_ADDRESS=... python jobs/train.py`) from its own environment.
"""

from __future__ import annotations

import json
import os

import ray
from ray.job_config import JobConfig

FORWARDED_PREFIXES = ("AWS_", "GOOGLE_", "MLFLOW_")
# Set by Ray's job manager in a submitted job's driver: the job's runtime_env.
SUBMITTED_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def connect() -> None:
    """`ray.init()` unless connected: the job's cluster inside `ray job submit` or under
    RAY_ADDRESS, else a new local instance, passing on `variables_for_workers()`."""
    if ray.is_initialized():
        return
    variables = variables_for_workers(dict(os.environ))
    ray.init(runtime_env={"env_vars": variables} if variables else None)


def variables_for_workers(environment: dict[str, str]) -> dict[str, str]:
    """The storage and tracking variables of `environment` that the job's runtime_env does
    not already carry (Ray refuses a driver runtime_env that repeats a job's variable)."""
    submitted = environment.get(SUBMITTED_JOB_CONFIG_ENV)
    job_variables = (
        (JobConfig.from_json(json.loads(submitted)).runtime_env or {}).get("env_vars", {})
        if submitted
        else {}
    )
    return {
        name: value
        for name, value in environment.items()
        if name.startswith(FORWARDED_PREFIXES) and name not in job_variables
    }
