"""`benchmarks/gpu.py`, the check a lent GPU machine runs, runs here on the CPU at tiny sizes,
so a change that breaks it shows up in the suite rather than on the GPU machine's clock."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_the_gpu_check_runs_its_training_step_and_evaluation_on_the_cpu(tmp_path):
    output = tmp_path / "gpu.json"
    arguments = ["--device", "cpu", "--backbone", "resnet18", "--num-classes", "4"]
    arguments += ["--batch-size", "2", "--size", "64", "--warmup", "1", "--iterations", "1"]
    finished = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu.py",
            *arguments,
            "--ddp-steps",
            "1",
            "--output",
            str(output),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["passed"] and not report["problems"], report["problems"]
    assert report["device"] == "cpu"
    assert len(report["training"]) == 4  # precision none/bf16 x channels_last off/on
    assert report["auto_features"]["world_size_2"]["sync_batchnorm"] is False
