"""Start-up settings that depend on where a job's Ray runs (no Ray started here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from import_probe import modules_imported_by

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
    job = Path(__file__).resolve().parents[1] / "jobs" / "train.py"
    assert modules_imported_by(f"import runpy\nrunpy.run_path({str(job)!r})", ["torch"]) == []


def test_the_training_functions_background_import_hands_its_error_to_the_loop():
    from pipeline.train.entry import import_in_background

    assert import_in_background(("json", "csv")).result(timeout=60) is None
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        import_in_background(("json", "no_such_module_here")).result(timeout=60)


def test_torch_optim_still_imports_dynamo_at_its_first_step():
    """entry.LOOP_MODULES imports torch._dynamo ahead because the first optimizer step would."""
    from pipeline.train.entry import LOOP_MODULES

    program = (
        "import torch\n"
        "weight = torch.nn.Parameter(torch.ones(2))\n"
        "optimizer = torch.optim.AdamW([weight])\n"
        "weight.sum().backward()\n"
        "optimizer.step()"
    )
    assert modules_imported_by(program, ["torch._dynamo"]) == ["torch._dynamo"], (
        "torch.optim no longer imports torch._dynamo: drop it from entry.LOOP_MODULES"
    )
    assert "torch._dynamo" in LOOP_MODULES


class _RecordingRun:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


def test_rank_zero_opens_its_mlflow_run_only_once_asked_after_the_first_step():
    import threading

    from pipeline.train.worker import _OpeningTracker

    opened, run = threading.Event(), _RecordingRun()

    def open_run() -> _RecordingRun:
        opened.set()
        return run

    tracker = _OpeningTracker(open_run)
    assert not opened.wait(0.2), "the MLflow run was opened before the loop asked"
    tracker.start_opening()
    tracker.start_opening()
    assert opened.wait(10)
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    assert run.logged == [(1, {"train_loss": 1.0})]


def test_logging_opens_the_run_when_no_step_was_taken_and_raises_its_error():
    from pipeline.train.worker import _OpeningTracker

    def unreachable() -> _RecordingRun:
        raise ConnectionError("no tracking server at http://127.0.0.1:1")

    with pytest.raises(ConnectionError, match="no tracking server"):
        _OpeningTracker(unreachable).log_metrics({"nonfinite_loss": 1}, step=1)
