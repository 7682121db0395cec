"""Specification: the cluster path on one machine. `tools/local_cluster.py up` gives a user a
working replica of the cluster (3 Ray nodes with the cluster's roles, an S3 server, an MLflow
server), and jobs submitted to it as a user would, with every path on s3://, succeed, survive
a lost node, and fail in time when no node replaces it.

One replica for the module: the fixture runs the user's command (`up --nodes 3`), and `down`
after the last test, checking by PID that nothing it started is left. The replica's nodes
start without any AWS_* or MLFLOW_* variable: everything the workers need reaches them through
the job's runtime_env, which is what these tests prove. Runs are tiny (32 px, 8 images, 3
epochs); the assertions are the cluster's, not the model's.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import mlflow
import pytest
from helpers.local_cluster import LocalCluster, local_cluster_fixture  # noqa: F401
from helpers.runs import metric_steps

from pipeline.data.shards import DatasetError, load_manifest
from pipeline.evaluate.counts import evaluate_locally
from pipeline.evaluate.evaluation import read_split_samples
from pipeline.evaluate.inference_model import load_project_checkpoint
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.tracking.node_metrics import node_name
from pipeline.tracking.runs import child_runs
from pipeline.tracking.tags import (
    BEST_TRIAL_TAG,
    EPOCHS_RUN_TAG,
    RUN_NAME_TAG,
    TRIAL_ID_TAG,
    WORKER_NODES_TAG,
)
from pipeline.train.hooks import HOOKS_ENV
from pipeline.train.run_folder import latest_checkpoint

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from replica.parts import NODE_LABEL  # noqa: E402

# What a job records as its code version when it runs outside a git checkout.
JOB_COMMIT = "abc123"

TINY_RUN = (
    "data.augmentation.crop_size=[32, 32]",
    "data.augmentation.scale_range=[1.0, 1.0]",
    "model.channels=64",
    "model.pool_scales=[1, 2]",
    "optimization.batch_size=4",
    "optimization.epochs=3",
    "scaling.num_workers=2",
    # One training worker per worker node: each offers one apcnet_worker_node.
    "scaling.resources_per_worker={CPU: 1, apcnet_worker_node: 1}",
    "scaling.process_group_timeout_s=30",
    "tracking.experiment_name=cluster-path",
    # Every worker node, the one lost mid-run included, logs its utilisation at least once.
    "tracking.node_metrics_interval_s=2",
)


# ------------------------------------------------------------------------------ helpers


def s3_client(cluster: LocalCluster):
    exports = cluster.exports
    return boto3.client(
        "s3",
        endpoint_url=exports["AWS_ENDPOINT_URL"],
        aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        region_name=exports.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def bucket_keys(cluster: LocalCluster, prefix: str) -> list[str]:
    pages = s3_client(cluster).get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=cluster.bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


def job_variables(cluster: LocalCluster, home: Path) -> dict[str, str]:
    """The job's env_vars: storage and tracking settings, and a home folder to check."""
    settings = {k: v for k, v in cluster.exports.items() if k.startswith(("AWS_", "MLFLOW_"))}
    return {**settings, "APCNET_HOME": str(home), "APCNET_GIT_COMMIT": JOB_COMMIT}


def submit_training(
    cluster: LocalCluster,
    name: str,
    home: Path,
    *overrides: str,
    wait: bool = False,
    env: dict[str, str] | None = None,
    job: str = "jobs/train.py",
) -> subprocess.CompletedProcess:
    """`ray job submit` of `job` (the training job, or the search) on the tiny run, with every
    path in the bucket."""
    bucket = cluster.bucket
    settings = [
        f"data.path=s3://{bucket}/shards/synthetic",
        f"checkpointing.storage_path=s3://{bucket}/runs",
        *TINY_RUN,
        *overrides,
    ]
    command = [
        "ray",
        "job",
        "submit",
        "--working-dir",
        ".",
        "--submission-id",
        name,
        "--runtime-env-json",
        json.dumps({"env_vars": {**job_variables(cluster, home), **(env or {})}}),
        *([] if wait else ["--no-wait"]),
        "--",
        "python",
        job,
        "--name",
        name,
        *[part for setting in settings for part in ("--set", setting)],
    ]
    return cluster.run(command, timeout=900)


def job_status(cluster: LocalCluster, job_id: str) -> str:
    """The job's status from Ray's Job SDK (the CLI's wording changes between states and
    versions: "Status for job ..." while it runs, "Job 'x' succeeded" once it ended)."""
    script = (
        "import sys\n"
        "from ray.job_submission import JobSubmissionClient\n"
        "print(JobSubmissionClient().get_job_status(sys.argv[1]).value)\n"
    )
    result = cluster.run([sys.executable, "-c", script, job_id], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def wait_for_job(cluster: LocalCluster, job_id: str, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = job_status(cluster, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(3)
    raise AssertionError(f"job {job_id} still {job_status(cluster, job_id)} after {timeout_s} s")


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    return cluster.run(["ray", "job", "logs", job_id], timeout=60).stdout


def state_api(cluster: LocalCluster, what: str, resource: str = "") -> list[dict]:
    """Ray's State API (not the project's own records): nodes (those offering `resource`, if
    given), or the actors of a class (training workers: "RayTrainWorker"; node utilisation
    reporters: "NodeReporter"; a search's trial drivers: "ImplicitFunc")."""
    script = (
        "import json, sys\n"
        "from ray.util import state\n"
        "if sys.argv[1] == 'nodes':\n"
        "    rows = state.list_nodes(limit=1000, detail=True)\n"
        "    rows = [r for r in rows if sys.argv[2] in (r.resources_total or {}) or not sys.argv[2]]\n"
        "else:\n"
        "    rows = state.list_actors(filters=[('class_name', '=', sys.argv[1])],\n"
        "                             limit=1000, detail=True)\n"
        "print(json.dumps([{'id': r.node_id, 'state': r.state} for r in rows]))\n"
    )
    result = cluster.run([sys.executable, "-c", script, what, resource], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def alive_nodes(cluster: LocalCluster) -> set[str]:
    return {row["id"] for row in state_api(cluster, "nodes") if row["state"] == "ALIVE"}


def worker_nodes(cluster: LocalCluster) -> set[str]:
    return {row["id"] for row in state_api(cluster, "RayTrainWorker")}


def mlflow_run(cluster: LocalCluster, name: str):
    client = mlflow.MlflowClient(tracking_uri=cluster.mlflow_url)
    experiment = client.get_experiment_by_name("cluster-path")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`apcnet.run_name` = '{name}'"
    )
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return client, runs[0]


def logged_steps(cluster: LocalCluster, name: str, key: str) -> list[int]:
    """The steps of `key` in the one MLflow run named `name` on the replica's server."""
    _, run = mlflow_run(cluster, name)
    return metric_steps(cluster.mlflow_url, run.info.run_id, key)


def wait_for_epoch(cluster: LocalCluster, name: str, epoch: int, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if epoch in logged_steps(cluster, name, "train_loss"):
                return
        except AssertionError:  # the run is not there yet
            pass
        time.sleep(2)
    raise AssertionError(f"epoch {epoch} of {name} never reached MLflow")


def wait_for_metric_value(
    cluster: LocalCluster, name: str, key: str, value: float, timeout_s: float = 300
) -> None:
    """Wait until the MLflow run `name` on the replica holds `key` = `value` at some step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client, run = mlflow_run(cluster, name)
            if any(m.value == value for m in client.get_metric_history(run.info.run_id, key)):
                return
        except AssertionError:  # the run is not there yet
            pass
        time.sleep(2)
    raise AssertionError(f"{key}={value} never reached MLflow for {name}")


def wait_for_registered_checkpoint(cluster: LocalCluster, name: str, timeout_s: float = 120) -> str:
    """The run's latest checkpoint in the bucket, as Ray's record names it, once there is one."""
    deadline = time.monotonic() + timeout_s
    with pytest.MonkeyPatch.context() as patch:
        for key, value in cluster.exports.items():
            if key.startswith("AWS_"):
                patch.setenv(key, value)
        while time.monotonic() < deadline:
            try:
                return latest_checkpoint(name, f"s3://{cluster.bucket}/runs")
            except FileNotFoundError:
                time.sleep(1)
    raise AssertionError(f"no checkpoint of {name} registered within {timeout_s} s")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shards(local_cluster: LocalCluster) -> str:
    """The synthetic set, prepared into the bucket with the user's command."""
    uri = f"s3://{local_cluster.bucket}/shards/synthetic"
    command = [sys.executable, "jobs/prepare_data.py", "--format", "synthetic", "--output", uri]
    sizes = ["--num-train", "8", "--num-val", "4", "--size", "32", "--no-progress"]
    result = local_cluster.run([*command, *sizes])
    assert result.returncode == 0, result.stderr[-3000:]
    return uri


@pytest.fixture(scope="module")
def node_loss_run(local_cluster: LocalCluster, shards, tmp_path_factory) -> dict:
    """A training job that loses a worker node after epoch 1 reached MLflow; a replacement
    node joins (as the autoscaler would start one) and the job goes on."""
    home = tmp_path_factory.mktemp("job-home")
    nodes_before = alive_nodes(local_cluster)
    submitted = submit_training(local_cluster, "lost-node", home)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    wait_for_epoch(local_cluster, "lost-node", 1)
    # Resume starts from the checkpoint Ray has registered; an epoch logged but not yet
    # registered is replayed (and skipped by the tracker). Kill once the bucket has one.
    wait_for_registered_checkpoint(local_cluster, "lost-node")
    workers_before = worker_nodes(local_cluster)
    killed = local_cluster.tool("kill-node", "2")
    assert killed.returncode == 0, killed.stderr
    added = local_cluster.tool("add-node")
    assert added.returncode == 0, added.stderr
    replacement = alive_nodes(local_cluster) - nodes_before
    status = wait_for_job(local_cluster, "lost-node")
    logs = job_logs(local_cluster, "lost-node")
    # Kept for reading after a failure: the job's log is long (Ray Data's progress output).
    (tmp_path_factory.getbasetemp() / "lost-node.log").write_text(logs)
    return {
        "status": status,
        "logs": logs,
        "home": home,
        "workers_before": workers_before,
        "workers_after": worker_nodes(local_cluster),
        "replacement": replacement,
    }


def labelled_worker_node(cluster: LocalCluster, node_id: str) -> int:
    """The replica's index (n<index>) of the Ray node `node_id`, from the label it starts with."""
    script = (
        "import json, sys\n"
        "from ray.util import state\n"
        "rows = state.list_nodes(limit=1000, detail=True)\n"
        "print(json.dumps([r.labels for r in rows if r.node_id == sys.argv[1]][0]))\n"
    )
    result = cluster.run([sys.executable, "-c", script, node_id], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = json.loads(result.stdout.strip().splitlines()[-1])
    return int(labels[NODE_LABEL].removeprefix("n"))


def wait_for_log(cluster: LocalCluster, job_id: str, text: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = job_logs(cluster, job_id)
        if text in logs:
            return logs
        time.sleep(2)
    raise AssertionError(f"{text!r} never appeared in the logs of {job_id}:\n{logs[-6000:]}")


# Long enough that the group grows back with epochs to spare: the notice lands in epoch 3 to
# 5, and Ray takes 20-40 s to grow the group after the join (steps of a group of one: 3 s);
# it has grown back by epoch 6 or 7.
ELASTIC_EPOCHS = 12


@pytest.fixture(scope="module")
def elastic_run(local_cluster: LocalCluster, shards, tmp_path_factory) -> dict:
    """An elastic job, num_workers [1, 2] with one worker per worker node: the node of rank 1
    is preempted with a 20 s notice (the workers checkpoint at the next step and shrink to 1
    worker accumulating 2 micro-batches); a node joins, and the group grows back to 2 at its
    next resize check once an epoch at 1 worker is in MLflow; the run finishes. Steps take
    0.5 s, 3 s at 1 worker (a test hook), so that the notice lands between two steps and the
    shrunk phase lasts a few epochs while Ray grows the group back."""
    home = tmp_path_factory.mktemp("elastic-home")
    hooks = {HOOKS_ENV: "helpers.faults.training:slow_steps", "PYTHONPATH": "tests"}
    submitted = submit_training(
        local_cluster,
        "elastic",
        home,
        "scaling.num_workers=[1, 2]",
        "scaling.resize_check_s=5",
        "scaling.node_wait_s=20",
        f"optimization.epochs={ELASTIC_EPOCHS}",
        "evaluation.every_epochs=4",
        env=hooks,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    wait_for_epoch(local_cluster, "elastic", 1)
    placed = wait_for_log(local_cluster, "elastic", "placed    2 workers")
    rank_one = placed.split("placed    2 workers on 2 nodes: ")[1].split(", ")[1].split(" ")[0]
    preempted = next(node for node in worker_nodes(local_cluster) if node.startswith(rank_one))
    index = labelled_worker_node(local_cluster, preempted)
    preemption = local_cluster.tool("preempt-node", str(index), "--deadline-s", "20")
    assert preemption.returncode == 0, preemption.stderr
    wait_for_log(local_cluster, "elastic", "shrinking to 1 workers")
    # The node joins once an epoch of the shrunk group reached MLflow: a group that grows
    # before it finishes an epoch logs none at 1 worker (the join can be seen within seconds).
    wait_for_metric_value(local_cluster, "elastic", "workers", 1.0)
    added = local_cluster.tool("add-node")
    assert added.returncode == 0, added.stderr
    status = wait_for_job(local_cluster, "elastic")
    logs = job_logs(local_cluster, "elastic")
    (tmp_path_factory.getbasetemp() / "elastic.log").write_text(logs)
    return {"status": status, "logs": logs, "preemption": preemption.stdout}


# A grid of two learning rates, both trials at once: each trial trains one worker that takes a
# whole worker node, and its driver (the Tune function) runs on the head, as Ray Train's own
# controller does. ASHA's one rung is epoch 3 of 5: the trial that loses its node (at epoch 1
# or 2) is still running then.
SEARCH = "nodes-search"
SEARCH_SETTINGS = (
    "scaling.num_workers=1",
    "optimization.epochs=5",
    "checkpointing.num_to_keep=10",
    "tune.search=grid",
    "tune.num_samples=1",
    "tune.max_concurrent_trials=2",
    "tune.trial_driver_resources={CPU: 0, apcnet_head_node: 0.01}",
    "tune.asha.grace_period=3",
    "tune.asha.reduction_factor=2",
    "tune.space.pool_scales=[[1, 2]]",
    "tune.space.gla=[]",
    "tune.space.learning_rate=[2.0e-2, 5.0e-3]",
)


def search_trials(cluster: LocalCluster, search: str) -> list:
    """The MLflow child runs of the search's parent run on the replica's server (none before
    the search opened its parent run)."""
    try:
        _, parent = mlflow_run(cluster, search)
    except AssertionError:
        return []
    return child_runs(parent.info.run_id, tracking_uri=cluster.mlflow_url)


def trained_on(run) -> str:
    """The node the trial's (one) worker last trained on, from the tag of its first epoch."""
    return run.data.tags[WORKER_NODES_TAG].split(",")[0].split(":")[1]


@pytest.fixture(scope="module")
def search_run(local_cluster: LocalCluster, shards, tmp_path_factory) -> dict:
    """The search, submitted as a user would, with Tune's state and every checkpoint in the
    bucket. Once both trials trained an epoch, the worker node of one of them is lost and a node
    joins: that trial's training restarts on the new node from its checkpoint in the bucket."""
    home = tmp_path_factory.mktemp("search-home")
    submitted = submit_training(
        local_cluster,
        SEARCH,
        home,
        *SEARCH_SETTINGS,
        f"tune.storage_path=s3://{local_cluster.bucket}/tune",
        job="jobs/tune.py",
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    deadline = time.monotonic() + 400
    while True:
        trials = [
            run for run in search_trials(local_cluster, SEARCH) if WORKER_NODES_TAG in run.data.tags
        ]
        if len(trials) == 2:
            break
        assert time.monotonic() < deadline, f"two trials never trained an epoch: {trials}"
        time.sleep(1)
    placement = {run.data.tags[TRIAL_ID_TAG]: trained_on(run) for run in trials}
    # The trial that has trained least: it is far from ASHA's rung and from its end.
    interrupted = min(
        trials,
        key=lambda run: max(metric_steps(local_cluster.mlflow_url, run.info.run_id, "train_loss")),
    )
    run_name = interrupted.data.tags[RUN_NAME_TAG]
    checkpoint = wait_for_registered_checkpoint(local_cluster, run_name)
    lost_node = trained_on(interrupted)
    killed_at = time.time()
    killed = local_cluster.tool("kill-node", str(labelled_worker_node(local_cluster, lost_node)))
    assert killed.returncode == 0, killed.stderr
    nodes_before = alive_nodes(local_cluster)
    added = local_cluster.tool("add-node")
    assert added.returncode == 0, added.stderr
    status = wait_for_job(local_cluster, SEARCH)
    logs = job_logs(local_cluster, SEARCH)
    (tmp_path_factory.getbasetemp() / f"{SEARCH}.log").write_text(logs)
    return {
        "status": status,
        "logs": logs,
        "placement": placement,
        "interrupted": interrupted.data.tags[TRIAL_ID_TAG],
        "run_name": run_name,
        "checkpoint_at_loss": checkpoint,
        "lost_node": lost_node,
        "killed_at": killed_at,
        "replacement": alive_nodes(local_cluster) - nodes_before,
    }


# ------------------------------------------------------------------------------ the replica
# These run first, while the replica is as `up` left it (the jobs below kill and add nodes).


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
    client = mlflow.MlflowClient(tracking_uri=local_cluster.mlflow_url)
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


# ------------------------------------------------------------------------------ jobs on it


def test_training_with_every_path_on_s3_survives_a_lost_node(node_loss_run):
    assert node_loss_run["status"] == "SUCCEEDED", node_loss_run["logs"][-4000:]
    assert len(node_loss_run["workers_before"]) >= 2, "workers must run on distinct nodes"
    assert len(node_loss_run["replacement"]) == 1
    # Resumed from the bucket on the new node (Ray's State API, not the project's tag).
    assert node_loss_run["replacement"] <= node_loss_run["workers_after"]
    resumed = [line for line in node_loss_run["logs"].splitlines() if "resum" in line.lower()]
    assert any("restarting the 2 workers: resuming at epoch" in line for line in resumed), (
        resumed,
        [line for line in node_loss_run["logs"].splitlines() if "epoch" in line][-30:],
    )


def test_every_epoch_reaches_mlflow_exactly_once_with_artifacts_in_the_bucket(
    local_cluster, node_loss_run
):
    assert logged_steps(local_cluster, "lost-node", "train_loss") == [1, 2, 3]
    # Validation runs every evaluation.every_epochs epochs and after the last one.
    validated = logged_steps(local_cluster, "lost-node", "val_miou")
    assert validated == sorted(set(validated)) and validated[-1] == 3, validated
    _, run = mlflow_run(local_cluster, "lost-node")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == JOB_COMMIT
    assert "run lost-node finished" in node_loss_run["logs"]
    assert "apcnet.worker_nodes" in run.data.tags
    artifacts = bucket_keys(local_cluster, "mlflow/")
    assert any(key.endswith(f"{run.info.run_id}/artifacts/config.yaml") for key in artifacts)


def test_each_worker_node_logs_its_utilisation_under_its_own_name(local_cluster, node_loss_run):
    # The lost node, the one that stayed and the replacement: each sampled by a reporter
    # that ran on it (Ray's State API) and named its metrics after it.
    _, run = mlflow_run(local_cluster, "lost-node")
    named = {key.split("/")[1] for key in run.data.metrics if key.startswith("system/")}
    trained_on = node_loss_run["workers_after"]
    assert len(trained_on) == 3
    assert named == {node_name(node) for node in trained_on}
    reporters_ran_on = {row["id"] for row in state_api(local_cluster, "NodeReporter")}
    assert {node_name(node) for node in reporters_ran_on} == named


def test_checkpoints_and_run_records_are_in_the_bucket_and_nothing_on_local_disk(
    local_cluster, node_loss_run
):
    keys = bucket_keys(local_cluster, "runs/lost-node/")
    assert "runs/lost-node/config.yaml" in keys
    assert "runs/lost-node/COMPLETE.json" in keys
    assert "runs/lost-node/epoch_0003/checkpoint.pt" in keys
    assert not (node_loss_run["home"] / "runs").exists()


def test_evaluating_the_run_on_the_replica_counts_like_one_process(
    local_cluster, node_loss_run, monkeypatch
):
    storage = f"s3://{local_cluster.bucket}/runs"
    job = [
        "ray",
        "job",
        "submit",
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps({"env_vars": job_variables(local_cluster, node_loss_run["home"])}),
        "--",
        "python",
        "jobs/evaluate.py",
        "--run",
        "lost-node",
        "--storage-path",
        storage,
        "--experiment",
        "cluster-path",
    ]
    evaluated = local_cluster.run(job, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]

    for key, value in local_cluster.exports.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    from pipeline.train.run_folder import best_checkpoint

    inference = load_project_checkpoint(best_checkpoint("lost-node", storage))
    manifest = load_manifest(inference.manifest)
    samples = read_split_samples(manifest, "val", inference.mean, inference.std)
    local = evaluate_locally(
        inference.model, samples, TestTimeOptions(), inference.num_classes, manifest.ignore_index
    ).scores()
    client = mlflow.MlflowClient(tracking_uri=local_cluster.mlflow_url)
    experiment = client.get_experiment_by_name("cluster-path")
    evaluations = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`apcnet.kind` = 'evaluation'"
    )
    assert len(evaluations) == 1
    logged = evaluations[0].data.metrics
    assert logged["val_miou"] == pytest.approx(local.miou, abs=1e-12)
    for name, iou in zip(manifest.class_names, local.per_class_iou, strict=True):
        assert logged[f"val_iou/{name}"] == pytest.approx(iou, abs=1e-12, nan_ok=True), name


def test_an_interrupted_checkpoint_upload_is_never_the_latest(
    local_cluster, node_loss_run, monkeypatch
):
    # What a cut-off upload leaves: a later epoch folder with part of a checkpoint file.
    s3_client(local_cluster).put_object(
        Bucket=local_cluster.bucket, Key="runs/lost-node/epoch_0004/checkpoint.pt", Body=b"PK\x03"
    )
    for key, value in local_cluster.exports.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    latest = latest_checkpoint("lost-node", f"s3://{local_cluster.bucket}/runs")
    assert latest.endswith("lost-node/epoch_0003/checkpoint.pt")


def test_a_shard_write_killed_midway_on_s3_is_refused_by_name(local_cluster, monkeypatch):
    uri = f"s3://{local_cluster.bucket}/shards/killed"
    command = [sys.executable, "jobs/prepare_data.py", "--format", "synthetic", "--output", uri]
    sizes = ["--num-train", "400", "--num-val", "8", "--size", "32", "--max-rows", "8"]
    writer = subprocess.Popen(
        [*command, *sizes, "--no-progress"],
        cwd=Path(__file__).resolve().parent.parent,
        env=local_cluster.environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not bucket_keys(local_cluster, "shards/killed/") and time.monotonic() < deadline:
        assert writer.poll() is None, "the writer ended before it was killed"
        time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert bucket_keys(local_cluster, "shards/killed/"), "no shard was written before the kill"
    assert "shards/killed/manifest.json" not in bucket_keys(local_cluster, "shards/killed/")
    for key, value in local_cluster.exports.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(DatasetError, match="shards/killed"):
        load_manifest(uri)


def test_an_elastic_run_checkpoints_on_notice_shrinks_and_grows_with_one_line_per_event(
    local_cluster, elastic_run
):
    assert elastic_run["status"] == "SUCCEEDED", elastic_run["logs"][-4000:]
    logs = elastic_run["logs"]
    for line in (
        "preemption notice: node",
        "checkpoint saved; waiting for Ray Train to restart the workers from it",
        "shrinking to 1 workers (from 2): resuming at epoch",
        "2 images x 2 micro-batches per worker, 4 per step",
        "joined: room for 2 workers",
        "growing to 2 workers (from 1)",
    ):
        assert line in logs, (line, logs[-4000:])
    # The notice's checkpoint is at a step boundary, so the shrink lost no step.
    assert "shrinking to 1 workers (from 2): resuming at epoch" in logs
    shrink = logs.split("shrinking to 1 workers (from 2): ")[1].splitlines()[0]
    assert "; 0 iterations since that checkpoint lost)" in shrink, shrink
    assert " step 0 " not in shrink, shrink  # it resumed mid-epoch
    # Ray's own tracebacks of the expected loss stay behind --verbose.
    assert "Traceback (most recent call last)" not in logs, logs[-4000:]


def test_an_elastic_run_logs_every_epoch_once_with_its_size_and_the_same_global_batch(
    local_cluster, elastic_run
):
    assert elastic_run["status"] == "SUCCEEDED"
    client, run = mlflow_run(local_cluster, "elastic")

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    losses = history("train_loss")
    assert [step for step, _ in losses] == list(range(1, ELASTIC_EPOCHS + 1)), losses
    assert all(math.isfinite(value) for _, value in losses), losses
    workers = [int(value) for _, value in history("workers")]
    sizes = [size for index, size in enumerate(workers) if index == 0 or workers[index - 1] != size]
    assert sizes == [2, 1, 2], workers
    accumulation = [int(value) for _, value in history("accumulation_steps")]
    assert accumulation == [2 if size == 1 else 1 for size in workers], (workers, accumulation)
    assert {value for _, value in history("global_batch")} == {4.0}
    assert len(history("resize_lost_iterations")) == ELASTIC_EPOCHS
    # Every epoch, before and after each resize, read its own epoch's augmentation.
    assert [value for _, value in history("augmentation_epoch_drift")] == [0.0] * ELASTIC_EPOCHS


def test_a_search_runs_a_trial_per_worker_node_and_survives_losing_one(local_cluster, search_run):
    assert search_run["status"] == "SUCCEEDED", search_run["logs"][-4000:]
    placement = search_run["placement"]
    assert len(set(placement.values())) == 2, placement  # one trial per worker node
    # The trial drivers ran on the head (Ray's State API: the Tune function's actors).
    heads = {row["id"] for row in state_api(local_cluster, "nodes", "apcnet_head_node")}
    drivers = state_api(local_cluster, "ImplicitFunc")
    assert drivers and {row["id"] for row in drivers} == heads, (drivers, heads)
    # The interrupted trial said so on the search's console and trained on the new node.
    trial = search_run["interrupted"]
    lost = search_run["lost_node"][:8]
    assert f"trial {trial}: node {lost} lost at" in search_run["logs"], search_run["logs"][-4000:]
    (resumed,) = [
        run for run in search_trials(local_cluster, SEARCH) if run.data.tags[TRIAL_ID_TAG] == trial
    ]
    assert {trained_on(resumed)} == search_run["replacement"]


def test_the_interrupted_trial_resumed_from_its_checkpoint_in_the_bucket(local_cluster, search_run):
    # Resumed, not restarted: the checkpoints up to the one registered when the node was lost
    # were written before the loss, and never again.
    saved_epoch = int(search_run["checkpoint_at_loss"].split("/epoch_")[1][:4])
    folder = f"runs/{search_run['run_name']}/"
    listed = s3_client(local_cluster).list_objects_v2(Bucket=local_cluster.bucket, Prefix=folder)
    written = {
        int(item["Key"].split("/epoch_")[1][:4]): item["LastModified"].timestamp()
        for item in listed.get("Contents", [])
        if item["Key"].endswith("/checkpoint.pt")
    }
    assert set(range(1, saved_epoch + 1)) <= set(written), written
    assert all(written[epoch] < search_run["killed_at"] for epoch in range(1, saved_epoch + 1))
    assert max(written) > saved_epoch, written  # and it trained on after the loss
    # Tune's own state is in the bucket too.
    assert any(
        key.startswith(f"tune/{SEARCH}/experiment_state")
        for key in bucket_keys(local_cluster, f"tune/{SEARCH}/")
    )


def test_each_trial_logs_its_epochs_once_under_the_search_and_compare_lists_them(
    local_cluster, search_run
):
    assert search_run["status"] == "SUCCEEDED"
    client = mlflow.MlflowClient(tracking_uri=local_cluster.mlflow_url)
    trials = search_trials(local_cluster, SEARCH)
    assert len(trials) == 2
    best_of = {}
    for run in trials:
        epochs = int(run.data.tags[EPOCHS_RUN_TAG])
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), run.info.run_name
        scores = client.get_metric_history(run.info.run_id, "val_miou")
        best_of[run.data.tags[TRIAL_ID_TAG]] = max(m.value for m in scores)
    # The search's choice rule: the best val_miou over the epochs each trial ran.
    _, parent = mlflow_run(local_cluster, SEARCH)
    assert parent.data.tags[BEST_TRIAL_TAG] == max(best_of, key=best_of.get)
    compared = local_cluster.run(
        [sys.executable, "jobs/compare.py", "--parent", SEARCH, "--experiment", "cluster-path"]
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr[-3000:]
    for run in trials:
        assert (
            run.info.run_name in compared.stdout or run.data.tags[RUN_NAME_TAG] in compared.stdout
        )


def test_a_tracking_outage_loses_no_epoch_and_without_a_replacement_node_the_job_fails_in_time(
    local_cluster, node_loss_run, tmp_path
):
    # The tracking server stops after epoch 1 reached it and comes back 20 s later (longer than
    # a tiny epoch): the epochs logged meanwhile are retried, not lost.
    submitted = submit_training(
        local_cluster,
        "no-replacement",
        tmp_path,
        "scaling.node_wait_s=20",
        "optimization.epochs=30",
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    wait_for_epoch(local_cluster, "no-replacement", 1)
    stopped = local_cluster.tool("stop-tracking")
    assert stopped.returncode == 0, stopped.stderr
    outage_began_ms = time.time() * 1000
    time.sleep(20)
    outage_ended_ms = time.time() * 1000
    started = local_cluster.tool("start-tracking")
    assert started.returncode == 0, started.stderr
    wait_for_epoch(local_cluster, "no-replacement", 3)
    logged = logged_steps(local_cluster, "no-replacement", "train_loss")
    assert logged == list(range(1, len(logged) + 1)), logged
    # A metric is stamped when its logging call begins: one stamped inside the outage was
    # logged by a call that could not reach the server then, and reached it after.
    client, run = mlflow_run(local_cluster, "no-replacement")
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert any(outage_began_ms <= stamp <= outage_ended_ms for stamp in stamps), (
        "no epoch was logged during the outage",
        outage_began_ms,
        outage_ended_ms,
        stamps,
    )
    # Each node's reporter sampled through the outage: its samples waited and reached the
    # server once it came back.
    cpu_keys = [key for key in run.data.metrics if key.endswith("/cpu_utilization_percentage")]
    sampled = [
        m.timestamp for key in cpu_keys for m in client.get_metric_history(run.info.run_id, key)
    ]
    assert cpu_keys and any(outage_began_ms < t < outage_ended_ms for t in sampled), cpu_keys

    # Then the last worker node goes, and none replaces it.
    parts = json.loads((local_cluster.directory / "state.json").read_text())["parts"]
    newest_node = max(int(part["name"][1:]) for part in parts if part["name"][0] == "n")
    killed = local_cluster.tool("kill-node", str(newest_node))
    assert killed.returncode == 0, killed.stderr
    killed_at = time.monotonic()
    status = wait_for_job(local_cluster, "no-replacement", timeout_s=300)
    assert status == "FAILED"
    assert time.monotonic() - killed_at < 240
    logs = job_logs(local_cluster, "no-replacement")
    assert "scaling.node_wait_s=20" in logs, logs[-3000:]
