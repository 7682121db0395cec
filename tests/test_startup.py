"""Start-up settings that depend on where a job's Ray runs (no Ray started here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.train import startup
from pipeline.train.connection import SUBMITTED_JOB_CONFIG_ENV, joins_a_cluster

WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def test_a_job_with_no_address_starts_its_own_instance():
    assert not joins_a_cluster({"HOME": "/root"}, {})


@pytest.mark.parametrize(
    ("environment", "init_options"),
    [
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, {}),
        ({SUBMITTED_JOB_CONFIG_ENV: '{"runtime_env": {}}'}, {}),
        ({}, {"address": "ray://head:10001"}),
    ],
)
def test_an_address_or_a_submitted_job_joins_a_cluster(environment, init_options):
    assert joins_a_cluster(environment, init_options)


def test_a_local_instance_runs_without_the_preemption_watcher(monkeypatch):
    monkeypatch.delenv(WATCHER, raising=False)
    startup.apply_local_instance_settings()
    assert os.environ[WATCHER] == "0"


def test_a_users_own_watcher_setting_wins(monkeypatch):
    monkeypatch.setenv(WATCHER, "1")
    startup.apply_local_instance_settings()
    assert os.environ[WATCHER] == "1"


def test_the_training_job_imports_without_torch():
    # torch costs the driver about 1.2 s before the first step; it needs it only after
    # training (the picture) or to read a checkpoint.
    import subprocess
    import sys

    job = Path(__file__).resolve().parents[1] / "jobs" / "train.py"
    script = f"import sys, runpy\nrunpy.run_path({str(job)!r})\nprint('torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert result.stdout.decode().split()[-1] == "False"
