"""Specification of run comparison: MLflow runs as a table sorted by a metric, plus curves."""

import math
from pathlib import Path

import pytest
from helpers.jobs import run_job_process

from pipeline.tracking.compare import (
    collect_runs,
    format_runs_table,
    plot_curves,
    resolve_parent_run_id,
)
from pipeline.tracking.runs import RunTracker

EXPERIMENT = "compare-spec"


def log_run(uri: str, name: str, curve: list[float], *, parent: str | None = None) -> str:
    tracker = RunTracker.open(name, tracking_uri=uri, experiment=EXPERIMENT, parent_run_id=parent)
    tracker.log_params({"model.pool_scales": "[1, 2]", "optimization.lr": "0.01"})
    for epoch, value in enumerate(curve, start=1):
        tracker.log_metrics({"val_miou": value}, step=epoch)
    tracker.set_terminated("FINISHED")
    return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store with a search parent, three trials and one unrelated run (read-only)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    parent = RunTracker.open("search", tracking_uri=uri, experiment=EXPERIMENT)
    log_run(uri, "middle", [0.1, 0.4, 0.3], parent=parent.run_id)
    log_run(uri, "best", [0.2, 0.6], parent=parent.run_id)
    log_run(uri, "worst", [0.05], parent=parent.run_id)
    log_run(uri, "outside", [0.9, 0.95])
    return uri


def test_runs_are_sorted_best_first_by_the_best_value_of_their_history(store: str) -> None:
    runs = collect_runs("val_miou", experiment=EXPERIMENT, tracking_uri=store)
    assert [run.name for run in runs] == ["outside", "best", "middle", "worst"]
    middle = runs[2]
    assert middle.best == pytest.approx(0.4)
    assert middle.curve == ((1, 0.1), (2, 0.4), (3, 0.3))
    assert middle.epochs == 3


def test_a_parent_given_by_name_limits_the_table_to_its_children(store: str) -> None:
    parent_id = resolve_parent_run_id("search", tracking_uri=store, experiment=EXPERIMENT)
    runs = collect_runs("val_miou", parent_run_id=parent_id, tracking_uri=store)
    assert [run.name for run in runs] == ["best", "middle", "worst"]


def test_min_mode_puts_the_lowest_first(store: str) -> None:
    runs = collect_runs("val_miou", experiment=EXPERIMENT, tracking_uri=store, mode="min")
    assert runs[0].name == "worst"
    assert runs[0].best == pytest.approx(0.05)


def test_an_unknown_parent_name_is_an_error_naming_it(store: str) -> None:
    with pytest.raises(LookupError, match="no-such-search"):
        resolve_parent_run_id("no-such-search", tracking_uri=store, experiment=EXPERIMENT)


def test_the_table_lists_rank_name_parameters_and_best_value(store: str) -> None:
    runs = collect_runs("val_miou", experiment=EXPERIMENT, tracking_uri=store)
    lines = format_runs_table(runs, "val_miou").splitlines()
    assert lines[0].split() == [
        "#",
        "run",
        "scales",
        "gla",
        "lr",
        "best",
        "val_miou",
        "epochs",
        "status",
    ]
    assert lines[2].split()[:2] == ["1", "outside"]
    assert "0.9500" in lines[2]
    assert "[1, 2]" in lines[3]


def test_plot_writes_a_png_file(store: str, tmp_path: Path) -> None:
    runs = collect_runs("val_miou", experiment=EXPERIMENT, tracking_uri=store)
    path = plot_curves(runs, "val_miou", tmp_path / "plots" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(runs[0].best)


@pytest.mark.integration
def test_the_job_prints_the_runs_in_order_and_writes_the_plot(store: str, tmp_path: Path) -> None:
    plot = tmp_path / "curves.png"
    arguments = ["--experiment", EXPERIMENT, "--parent", "search", "--tracking-uri", store]
    arguments += ["--plot", str(plot)]
    completed = run_job_process("compare.py", arguments, home=tmp_path / "home", timeout=120)
    assert completed.returncode == 0, completed.stderr
    names = [line.split()[1] for line in completed.stdout.splitlines()[2:5]]
    assert names == ["best", "middle", "worst"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
