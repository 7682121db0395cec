"""Every job reports bad input as one line on stderr, `error: <message>`, and exit code 2,
before it starts Ray; `--debug` adds the traceback; a bug keeps its traceback.

The jobs run as the user runs them: `python jobs/X.py ...` in a subprocess from the repository
root, with a fresh APCNET_HOME and no MLFLOW_TRACKING_URI. RAY_ADDRESS points at a port
nobody listens on, so a job that reached `ray.init()` before checking its input would fail
differently (a connection error with a traceback), not with the one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.jobs import job_module, run_job_process

from pipeline.train.connection import free_local_port

# Every test here runs a job as a subprocess.
pytestmark = pytest.mark.integration

# compare.py waits for an unreachable tracking server for at most 30 s (pipeline.tracking);
# the rest is importing torch, Ray and MLflow on a busy machine.
JOB_TIMEOUT_S = 120

# Arguments and the thing the error line must name; {tmp} is a fresh folder, {port} a free port.
BAD_INPUTS = [
    pytest.param("train.py", ["--set", "nosuch.key=1"], "nosuch.key", id="train-unknown-key"),
    pytest.param("tune.py", ["--set", "nosuch.key=1"], "nosuch.key", id="tune-unknown-key"),
    pytest.param(
        "evaluate.py",
        ["--checkpoint", "{tmp}/missing.pt"],
        "{tmp}/missing.pt",
        id="evaluate-missing-checkpoint",
    ),
    pytest.param(
        "predict.py",
        ["--checkpoint", "{tmp}/missing.pt", "--input", "{tmp}", "--output", "{tmp}/masks"],
        "{tmp}/missing.pt",
        id="predict-missing-checkpoint",
    ),
    pytest.param(
        "prepare_data.py",
        ["--format", "folder", "--source", "{tmp}/missing", "--output", "{tmp}/shards"],
        "{tmp}/missing",
        id="prepare_data-missing-source",
    ),
    pytest.param(
        "train.py",
        ["--set", "tracking.enabled=false", "--register", "demo"],
        "--register demo needs MLflow tracking",
        id="train-register-without-tracking",
    ),
    pytest.param(
        "train.py",
        ["--set", "scaling.sync_batchnorm=true"],
        "scaling.sync_batchnorm is true but scaling.use_gpu is false",
        id="train-sync-batchnorm-on-cpu",
    ),
    pytest.param(
        "register.py",
        ["--run", "missing-run", "--model-name", "demo", "--storage-path", "{tmp}"],
        "no training run 'missing-run' in {tmp}",
        id="register-missing-run",
    ),
    pytest.param(
        "compare.py",
        ["--tracking-uri", "http://127.0.0.1:{port}"],
        "http://127.0.0.1:{port}",
        id="compare-unreachable-tracking-server",
        marks=pytest.mark.integration,  # the bounded wait for the server is 30 s
    ),
]


def filled(template: str, tmp: Path, port: int) -> str:
    return template.format(tmp=tmp, port=port)


@pytest.mark.parametrize(("job", "arguments", "named"), BAD_INPUTS)
def test_bad_input_is_one_line_naming_it_and_exit_code_2(
    job: str, arguments: list[str], named: str, tmp_path: Path
) -> None:
    port = free_local_port()
    filled_in = [filled(a, tmp_path, port) for a in arguments]
    result = run_job_process(
        job, filled_in, home=tmp_path / "home", ray="unreachable", timeout=JOB_TIMEOUT_S
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert filled(named, tmp_path, port) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_debug_adds_the_traceback_before_the_line(tmp_path: Path) -> None:
    source = tmp_path / "missing"
    arguments = ["--format", "folder", "--source", str(source), "--output", str(tmp_path / "out")]
    result = run_job_process(
        "prepare_data.py",
        [*arguments, "--debug"],
        home=tmp_path / "home",
        ray="unreachable",
        timeout=JOB_TIMEOUT_S,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "DatasetError" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and str(source) in last_line


def raising(error: BaseException):
    def main(argv: list[str]) -> int:
        raise error

    return main


def test_the_exit_code_of_main_is_returned() -> None:
    assert job_module("cli").run_job(lambda argv: 3, []) == 3
    assert job_module("cli").run_job(lambda argv: None, []) == 0


def test_ctrl_c_is_one_line_and_exit_code_130(capsys) -> None:
    assert job_module("cli").run_job(raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_bug_keeps_its_exception() -> None:
    with pytest.raises(ZeroDivisionError):
        job_module("cli").run_job(raising(ZeroDivisionError("division by zero")), ["--debug"])


def test_a_diverged_training_run_is_one_line_and_exit_code_1(capsys) -> None:
    from pipeline.train.failures import NonFiniteLossError

    error = NonFiniteLossError("loss is nan at epoch 2")
    assert job_module("cli").run_job(raising(error), []) == 1
    assert capsys.readouterr().err == "error: loss is nan at epoch 2\n"


def test_an_unreadable_checkpoint_is_a_user_error(capsys) -> None:
    from apcnet.checkpoint import CheckpointError

    assert job_module("cli").run_job(raising(CheckpointError("not a checkpoint: x.pt")), []) == 2
    assert capsys.readouterr().err == "error: not a checkpoint: x.pt\n"
