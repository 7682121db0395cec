"""Specification: with tracking off, the jobs never import MLflow, in the driver or in any Ray
process, so they run where MLflow is not installed (the GPU machine has PyTorch and Ray only).

A package named `mlflow` placed first on every process's path stands for the missing one: its
import writes down who imported it and raises ImportError, as a missing package would. The jobs
run as a user runs them, each starting its own local Ray instance, whose processes inherit the
path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.jobs import REPO_ROOT, run_job_process

pytestmark = pytest.mark.integration

IMPORTS_LOG_VARIABLE = "APCNET_TEST_MLFLOW_IMPORTS"
MISSING_MLFLOW = f'''
import os
import traceback

with open(os.environ["{IMPORTS_LOG_VARIABLE}"], "a") as log:
    log.write("".join(traceback.format_stack()) + "\\n----\\n")
raise ImportError("No module named 'mlflow' (this machine has none)")
'''
UNTRACKED_RUN = [
    "--name",
    "untracked",
    "--set",
    "tracking.enabled=false",
    "--set",
    "data.synthetic.num_train=16",
    "--set",
    "data.synthetic.num_val=4",
    "--set",
    "data.synthetic.size=32",
    "--set",
    "data.augmentation.crop_size=[32, 32]",
    "--set",
    "optimization.epochs=1",
]


def project_frames(stacks: str) -> list[str]:
    """The lines of the recorded import stacks that are the project's own code."""
    project = (str(REPO_ROOT / "pipeline"), str(REPO_ROOT / "jobs"), str(REPO_ROOT / "apcnet"))
    return [line for line in stacks.splitlines() if any(root in line for root in project)]


def test_training_and_evaluating_with_tracking_off_never_import_mlflow(tmp_path: Path) -> None:
    missing = tmp_path / "site" / "mlflow"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(MISSING_MLFLOW)
    imports = tmp_path / "mlflow-imports.txt"
    search_path = os.pathsep.join([str(missing.parent), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": search_path.rstrip(os.pathsep), IMPORTS_LOG_VARIABLE: str(imports)}
    home = tmp_path / "home"

    trained = run_job_process("train.py", UNTRACKED_RUN, home=home, env=env, one_stream=True)
    assert trained.returncode == 0, trained.stdout[-4000:]
    assert "MLflow    off (tracking.enabled: false)" in trained.stdout
    evaluated = run_job_process(
        "evaluate.py", ["--run", "untracked", "--no-tracking"], home=home, env=env, one_stream=True
    )
    assert evaluated.returncode == 0, evaluated.stdout[-4000:]

    # Libraries may try MLflow as an optional extra (and carry on without it); the project's
    # own code never imports it.
    stacks = imports.read_text() if imports.exists() else ""
    assert not project_frames(stacks), stacks[-6000:]
