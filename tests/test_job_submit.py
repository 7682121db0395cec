"""Specification: the training job runs under `ray job submit` against a running cluster.

The test starts its own single-node cluster (`ray start --head` on loopback, free ports, its
own short temp folder), submits `python jobs/train.py` with `--working-dir .`, and stops only
the processes of that cluster (found by its temp folder), never other Ray instances.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config.schema import config_to_yaml, load_config
from pipeline.data.formats.synthetic import write_synthetic
from pipeline.tracking.runs import find_run
from pipeline.tune.search import API_SERVER_ADDRESS_VARIABLE

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Cluster:
    dashboard_url: str
    environment: dict[str, str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_using(marker: str) -> list[int]:
    """Pids whose command line mentions `marker` (our cluster's unique temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command_line and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    dashboard_port = free_port()
    environment = {
        **os.environ,
        # The job's `python` is the one on the cluster's PATH: this project's environment.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Ray 2.60 turns on token authentication; the CLI sends the token only in this mode.
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    }
    # This cluster is separate from the shared test instance: inheriting that instance's
    # address variables would send the job (and the State API) there instead.
    environment.pop("RAY_ADDRESS", None)
    environment.pop(API_SERVER_ADDRESS_VARIABLE, None)
    start = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=2",
        "--object-store-memory=500000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--include-dashboard=true",
    ]
    started = subprocess.run(start, env=environment, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(f"http://127.0.0.1:{dashboard_port}", environment)
    finally:
        for pid in processes_using(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while processes_using(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in processes_using(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_submitted_training_job_succeeds_and_its_run_appears_in_mlflow(ray_cluster, tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, num_train=8, num_val=4, size=32, seed=0)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(
        None,
        [
            f"data.path={data}",
            "data.augmentation.crop_size=[32, 32]",
            "model.backbone=resnet18",
            "model.channels=64",
            "model.pool_scales=[1, 2]",
            "optimization.batch_size=4",
            "optimization.epochs=1",
            f"checkpointing.storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment_name=submitted",
        ],
    )
    config_file = tmp_path / "submitted.yaml"
    config_file.write_text(config_to_yaml(config))
    runtime_env = {
        "env_vars": {"APCNET_HOME": str(tmp_path / "home"), "APCNET_GIT_COMMIT": "abc123"}
    }

    submitted = subprocess.run(
        [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_cluster.dashboard_url,
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "jobs/train.py",
            "--config",
            str(config_file),
            "--name",
            "submitted-run",
        ],
        cwd=REPO_ROOT,
        env=ray_cluster.environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower(), output[-4000:]
    assert "run submitted-run finished" in output

    run = find_run("submitted-run", tracking_uri=tracking_uri, experiment="submitted")
    assert run is not None
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert "train_loss" in run.data.metrics
