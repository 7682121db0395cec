"""Start-up settings that depend on where a job's Ray runs (no Ray started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.import_probe import modules_imported_by

from pipeline.train.connection import joins_a_cluster


def test_a_job_with_no_address_starts_its_own_instance():
    assert not joins_a_cluster({"HOME": "/root"}, {})


@pytest.mark.parametrize(
    ("environment", "init_options"),
    [
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, {}),
        ({}, {"address": "ray://head:10001"}),
    ],
)
def test_an_address_or_a_submitted_job_joins_a_cluster(environment, init_options):
    assert joins_a_cluster(environment, init_options)


def test_the_training_job_imports_without_torch():
    # torch costs the driver about 1.2 s before the first step; it needs it only after
    # training (the picture) or to read a checkpoint.
    job = Path(__file__).resolve().parents[1] / "jobs" / "train.py"
    assert modules_imported_by(f"import runpy\nrunpy.run_path({str(job)!r})", ["torch"]) == []


def test_an_epoch_without_validation_logs_no_val_miou_placeholder():
    from pipeline.train.epoch_logging import logged_metrics

    reported = {
        "epoch": 1,
        "train_loss": 2.5,
        "val_miou": float("nan"),
        "validated": 0,
        "worker_nodes": "0:a,1:b",
        "first_step_unix_s": 1.0,
        "startup/first_step_unix_s": 1.0,
        "startup/total_s": 20.0,
    }
    assert logged_metrics(reported) == {"train_loss": 2.5, "startup/total_s": 20.0}


def test_a_validated_epoch_logs_its_scores_including_a_class_without_pixels():
    from pipeline.train.epoch_logging import logged_metrics

    reported = {"epoch": 2, "val_miou": 0.5, "val_iou/cat": float("nan"), "validated": 1}
    logged = logged_metrics(reported)
    assert logged["val_miou"] == 0.5 and set(logged) == {"val_miou", "val_iou/cat"}
