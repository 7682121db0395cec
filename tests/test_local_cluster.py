"""Specification: `tools/local_cluster.py up` gives a user a working replica of the cluster.

One replica for the module (the fixture runs the user's command, `up --nodes 3`, and `down`
after the last test, checking by PID that nothing it started is left).
"""

import json
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
from local_cluster_fixture import LocalCluster, local_cluster_fixture  # noqa: F401
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def s3_client(cluster: LocalCluster):
    return boto3.client(
        "s3", endpoint_url=cluster.s3_url, region_name="us-east-1", **DUMMY_CREDENTIALS
    )


def test_the_three_ray_nodes_are_alive_with_the_cluster_roles(local_cluster):
    listing = (
        "import json; from ray.util.state import list_nodes; "
        "print(json.dumps([[n.state, n.resources_total] for n in list_nodes()]))"
    )
    listed = local_cluster.run([sys.executable, "-c", listing], timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    nodes = json.loads(listed.stdout.strip().splitlines()[-1])

    assert [state for state, _ in nodes] == ["ALIVE"] * 3
    heads = [resources for _, resources in nodes if "apcnet_head_node" in resources]
    workers = [resources for _, resources in nodes if "apcnet_worker_node" in resources]
    assert len(heads) == 1 and heads[0].get("CPU", 0) == 0
    assert len(workers) == 2
    assert all(r["apcnet_worker_node"] == 1 and r["CPU"] == 2 for r in workers)


def test_the_ray_nodes_run_without_storage_or_tracking_variables(local_cluster):
    for part in local_cluster.state["parts"]:
        if part["name"].startswith("n"):
            names = Path(f"/proc/{part['pid']}/environ").read_bytes().split(b"\0")
            keys = {name.split(b"=", 1)[0].decode() for name in names if name}
            assert not {key for key in keys if key.startswith(("AWS_", "MLFLOW_"))}
            assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} <= keys


def test_the_bucket_exists(local_cluster):
    buckets = s3_client(local_cluster).list_buckets()["Buckets"]
    assert [bucket["Name"] for bucket in buckets] == [local_cluster.bucket]


def test_a_job_submitted_with_the_token_and_runtime_env_reaches_the_bucket(local_cluster):
    job_env = {
        key: local_cluster.exports[key]
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    job_env["AWS_DEFAULT_REGION"] = local_cluster.exports["AWS_DEFAULT_REGION"]
    script = "import boto3; print('buckets:', [b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']])"
    runtime_env = json.dumps({"env_vars": job_env})
    ray = str(Path(sys.executable).parent / "ray")
    submitted = local_cluster.run(
        [ray, "job", "submit", "--runtime-env-json", runtime_env, "--", "python", "-c", script],
        timeout=300,
    )
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-3000:]
    assert f"buckets: ['{local_cluster.bucket}']" in output


def test_mlflow_answers_over_http(local_cluster):
    with urllib.request.urlopen(f"{local_cluster.mlflow_url}/health", timeout=10) as response:
        assert response.status == 200


def test_an_artifact_logged_through_mlflow_lands_in_the_bucket(local_cluster):
    client = MlflowClient(tracking_uri=local_cluster.mlflow_url)
    experiment_id = client.create_experiment("local-cluster-artifacts")
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello from the test", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    listed = s3_client(local_cluster).list_objects_v2(Bucket=local_cluster.bucket, Prefix="mlflow/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert [key for key in keys if key.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt")]


def test_a_second_up_is_refused_with_a_clear_message(local_cluster):
    refused = local_cluster.tool("up", "--nodes", "2")

    assert refused.returncode == 2
    assert "already runs" in refused.stderr and "down --dir" in refused.stderr
    state = json.loads((local_cluster.directory / "state.json").read_text())
    assert [part["pid"] for part in state["parts"]] == [
        part["pid"] for part in local_cluster.state["parts"]
    ]


def test_status_reports_every_part_alive(local_cluster):
    status = local_cluster.tool("status")

    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert set(lines) == {"n0", "n1", "n2", "s3", "mlflow"}
    assert all(" alive " in line for line in lines.values())
