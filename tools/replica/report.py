"""What the commands print about a replica: the status table, the user's shell exports, the
runtime_env a job needs, and the commands that prepare data, train and evaluate on it: the
same commands as the README's replica section (tests/test_replica_commands.py keeps them so)."""

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


def ray_client_env(replica: Replica) -> dict[str, str]:
    """What a Ray client (the `ray` CLI, `ray.init()`, the State API) needs to reach the
    replica's cluster with its token. RAY_ADDRESS is the GCS address (`ray status` and
    `ray.init()` refuse an http:// URL); the job CLI and the State API take
    RAY_API_SERVER_ADDRESS, the dashboard URL, first."""
    ray = {"RAY_ADDRESS": f"127.0.0.1:{replica.gcs_port}"}
    ray |= {"RAY_API_SERVER_ADDRESS": replica.dashboard_url, "RAY_AUTH_MODE": "token"}
    return ray | {"RAY_AUTH_TOKEN_PATH": replica.token_path}


def export_lines(replica: Replica) -> str:
    """The shell exports (`ray_client_env`, `job_env`), plus RUNTIME_ENV_JSON (a plain shell
    variable) for jobs."""
    variables = {**ray_client_env(replica), **job_env(replica)}
    lines = [f"export {key}={shlex.quote(value)}" for key, value in variables.items()]
    runtime_env = shlex.quote(json.dumps({"env_vars": job_env(replica)}))
    lines.append(f"export RUNTIME_ENV_JSON={runtime_env}  # for: ray job submit --runtime-env-json")
    return "\n".join([*lines, f"# bucket: s3://{replica.bucket}"])


# The example run the printed commands train and evaluate.
EXAMPLE_RUN = "local-1"


def walkthrough(replica: Replica, default_directory: bool) -> list[str]:
    """The commands a person runs next, one per line, with the exports of `env` in the shell:
    prepare a small data set in the bucket, train on one worker per worker node (a submitted
    job, followed by its logs), evaluate the run, bring the replica down. `--dir` is named
    unless the replica is in the default folder."""
    directory = "" if default_directory else f" --dir {shlex.quote(replica.directory)}"
    shards = f"s3://{replica.bucket}/shards/synthetic"
    runs = f"s3://{replica.bucket}/runs"
    submit = 'ray job submit --working-dir . --runtime-env-json "$RUNTIME_ENV_JSON"'
    return [
        f'eval "$({TOOL_COMMAND} env{directory})"',
        "python jobs/prepare_data.py --format synthetic --num-train 96 --num-val 16 --size 64"
        f" --output {shards}",
        f"{submit} --no-wait --submission-id {EXAMPLE_RUN} -- python jobs/train.py"
        f" --name {EXAMPLE_RUN} --set data.path={shards} --set checkpointing.storage_path={runs}"
        f" --set scaling.num_workers={len(replica.nodes) - 1}"
        f" --set 'scaling.resources_per_worker={{CPU: 1, {WORKER_RESOURCE}: 1}}'",
        f"ray job logs -f {EXAMPLE_RUN}",
        f"{submit} -- python jobs/evaluate.py --run {EXAMPLE_RUN} --storage-path {runs}",
        f"{TOOL_COMMAND} down{directory}",
    ]


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


def up_report(replica: Replica, default_directory: bool) -> str:
    """What `up` prints: the status, the exports, the commands to run next, and the dashboard
    (it asks for the replica's token)."""
    return "\n".join(
        [
            *status_lines(replica),
            "\nExports:",
            export_lines(replica),
            f"\nThe bucket s3://{replica.bucket} lives in memory: it is gone after `down`.",
            "Next, from the repository root (training takes about 75 s, evaluation about 25 s):",
            *walkthrough(replica, default_directory),
            f"\nDashboard: {replica.dashboard_url} (it asks for a token: the contents of"
            f" {replica.token_path})",
        ]
    )
