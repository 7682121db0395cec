"""Specification of training under faults: dead workers, a stopped driver, a NaN loss.

Workers really die (`os._exit` through the test-only hooks of tests/helpers/faults/training.py);
the driver is really killed (a `jobs/train.py` subprocess connected to the shared test cluster).
"""

import os
import signal
import time
from pathlib import Path

import pytest
from helpers.faults.training import NanLossAt, kill_marker
from helpers.jobs import run_job_process, start_job_process
from helpers.runs import metric_steps, mlflow_run_id, tiny_config
from mlflow import MlflowClient

from pipeline.config.schema import config_to_yaml
from pipeline.train.driver import train_or_resume
from pipeline.train.failures import NonFiniteLossError
from pipeline.train.hooks import HOOKS_ENV
from pipeline.train.run_folder import latest_checkpoint
from pipeline.train.state import read_progress

TESTS = Path(__file__).resolve().parent


@pytest.mark.integration
def test_killed_workers_are_replaced_and_every_epoch_reaches_mlflow_exactly_once(
    ray_session, tmp_path
):
    # The training job runs as a subprocess whose hooks come from APCNET_TRAINING_HOOKS, the
    # way any job-level fault test installs them: two real worker deaths in one run.
    config = tiny_config(tmp_path)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(config_to_yaml(config))
    python_path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    hooks = {HOOKS_ENV: "helpers.faults.training:two_worker_deaths", "PYTHONPATH": python_path}
    job = run_job(tmp_path, "--config", str(config_file), "--name", "killed-workers", env=hooks)
    assert job.returncode == 0, job.stderr[-3000:]
    folder = tmp_path / "runs" / "killed-workers"
    assert kill_marker(folder, "before-report", 1).exists()
    assert kill_marker(folder, "mid-epoch", 2).exists()
    history = read_progress(latest_checkpoint("killed-workers", tmp_path / "runs")).history
    assert [int(epoch["epoch"]) for epoch in history] == [1, 2]
    logged = mlflow_run_id(config, "killed-workers")
    for key in ("train_loss", "lr", "val_miou", "epoch_time_s"):
        assert metric_steps(config.tracking.tracking_uri, logged, key) == [1, 2], key
    # Each restarted group read the augmentation of the epoch it resumed at.
    drift = MlflowClient(config.tracking.tracking_uri).get_metric_history(
        logged, "augmentation_epoch_drift"
    )
    assert sorted((m.step, m.value) for m in drift) == [(1, 0.0), (2, 0.0)]


@pytest.mark.integration
def test_a_nan_loss_stops_training_with_a_clear_error_and_no_restart(ray_session, tmp_path):
    # Iteration 3 is the first step of epoch 2. Node metrics off: none are logged.
    config = tiny_config(tmp_path, "tracking.node_metrics=false")
    started = time.perf_counter()
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 at global iteration 3"):
        train_or_resume(config, "nan-loss", hooks=[NanLossAt(iteration=3)])
    latest = latest_checkpoint("nan-loss", tmp_path / "runs")
    assert read_progress(latest).epoch == 1, "the last good checkpoint is kept"
    uri, logged = config.tracking.tracking_uri, mlflow_run_id(config, "nan-loss")
    assert metric_steps(uri, logged, "train_loss") == [1]
    assert metric_steps(uri, logged, "nonfinite_loss") == [2]
    metrics = MlflowClient(uri).get_run(logged).data.metrics
    assert not [key for key in metrics if key.startswith("system/")]
    assert time.perf_counter() - started < 600


def run_job(root: Path, *arguments: str, timeout: float = 600, env: dict[str, str] | None = None):
    """`jobs/train.py <arguments>` to its end, its driver joining the shared test cluster
    instead of starting its own; its home is <root>/home."""
    return run_job_process(
        "train.py", arguments, home=root / "home", env=env, ray="shared", timeout=timeout
    )


def registered_checkpoint(storage: Path) -> bool:
    try:
        return Path(latest_checkpoint("resumable", storage)).is_file()
    except Exception:  # no record yet, or Ray is rewriting it right now
        return False


@pytest.mark.integration
def test_a_killed_driver_resubmitted_by_name_resumes_and_a_finished_run_says_complete(
    ray_session, tmp_path
):
    config = tiny_config(tmp_path)
    config_file = tmp_path / "resumable.yaml"
    config_file.write_text(config_to_yaml(config))

    driver = start_job_process(
        "train.py",
        ["--config", str(config_file), "--name", "resumable"],
        home=tmp_path / "home",
        log=tmp_path / "killed-driver.log",
        ray="shared",
    )
    # Kill the driver once Ray has registered a checkpoint (the record resume starts from).
    deadline = time.monotonic() + 600
    while not registered_checkpoint(tmp_path / "runs") and time.monotonic() < deadline:
        assert driver.poll() is None, "the first driver ended before it was killed"
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    assert registered_checkpoint(tmp_path / "runs"), "the first driver never saved a checkpoint"
    assert not (tmp_path / "runs" / "resumable" / "COMPLETE.json").exists()

    # Resubmitting the same job (same config, same name) resumes it.
    resumed = run_job(tmp_path, "--config", str(config_file), "--name", "resumable")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming resumable after epoch" in resumed.stdout + resumed.stderr
    logged = mlflow_run_id(config, "resumable")
    assert metric_steps(config.tracking.tracking_uri, logged, "train_loss") == [1, 2]

    again = run_job(tmp_path, "--config", str(config_file), "--name", "resumable", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout


@pytest.mark.integration
def test_an_elastic_group_below_its_minimum_stops_after_node_wait_s_with_one_line(
    ray_session, tmp_path
):
    # No node offers the resource each worker needs: Ray's elastic policy alone would wait
    # for one forever; the job stops after scaling.node_wait_s and says why in one line.
    config = tiny_config(
        tmp_path,
        "scaling.num_workers=[1, 2]",
        "scaling.resources_per_worker={CPU: 0.5, apcnet_absent_node: 1}",
        "scaling.node_wait_s=5",
    )
    config_file = tmp_path / "below-min.yaml"
    config_file.write_text(config_to_yaml(config))
    started = time.monotonic()
    job = run_job(tmp_path, "--config", str(config_file), "--name", "below-min", timeout=300)
    assert job.returncode == 2, (job.stdout[-2000:], job.stderr[-3000:])
    assert "waiting for nodes: the cluster holds 0 of the at least 1 workers" in job.stdout
    errors = [line for line in job.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, job.stderr[-3000:]
    assert "scaling.num_workers=[1, 2]" in errors[0] and "node_wait_s=5" in errors[0]
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    assert time.monotonic() - started < 120
