"""What the commands print about a replica: the status table, the user's shell exports, the
runtime_env a job needs, and the `ray job submit` line that trains on the replica."""

from __future__ import annotations

import json
import shlex

from replica.parts import DUMMY_AWS, WORKER_RESOURCE
from replica.processes import alive_parts
from replica.state import Replica

TOOL_COMMAND = "python tools/local_cluster.py"


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
    """One line per recorded part: alive or DEAD, its PID, and where it answers."""
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
    """What `up` prints: the status, the exports, the training command, how to bring it down."""
    command = f"{TOOL_COMMAND} {{}} --dir {shlex.quote(replica.directory)}"
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
