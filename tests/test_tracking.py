"""MLflow tracking against real stores: a SQLite file under tmp_path, and `mlflow server` for
the tests of a tracking server."""

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from helpers.mlflow_server import start_tracking_server
from helpers.runs import metric_steps
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from pipeline.tracking.node_metrics import (
    NodeMetricsReporter,
    NodeMetricsTarget,
    NodeSampler,
    metric_prefix,
)
from pipeline.tracking.retry import (
    DEFAULT_POLICY,
    HTTP_SETTINGS,
    RetryPolicy,
    TrackingUnavailableError,
    call_with_retry,
    http_request_bound_s,
    tracking_client,
)
from pipeline.tracking.runs import (
    ParamConflictError,
    RunTracker,
    child_runs,
    find_run,
    git_commit,
    resolve_tracking,
    sanitize_key,
)
from pipeline.tracking.tables import csv_table, markdown_table, text_table
from pipeline.tracking.tags import (
    DESCRIPTION_TAG,
    GIT_COMMIT_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
)
from pipeline.train.connection import free_local_port


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def open_run(store: str, name: str = "r50-voc", **kwargs) -> RunTracker:
    return RunTracker.open(name, tracking_uri=store, experiment="tests", **kwargs)


def downloaded_text(store: str, run_id: str, artifact: str, folder: Path) -> str:
    path = mlflow.MlflowClient(tracking_uri=store).download_artifacts(run_id, artifact, str(folder))
    return Path(path).read_text()


def test_open_creates_a_run_that_find_run_finds_by_name(store):
    tracker = open_run(store)
    found = find_run("r50-voc", tracking_uri=store, experiment="tests")
    assert not tracker.resumed
    assert found is not None and found.info.run_id == tracker.run_id
    assert found.info.run_name == "r50-voc"


def test_find_run_returns_none_for_an_unknown_name_or_experiment(store):
    open_run(store)
    assert find_run("other", tracking_uri=store, experiment="tests") is None
    assert find_run("r50-voc", tracking_uri=store, experiment="missing") is None


def test_reopening_by_name_resumes_the_same_run_as_running(store):
    first = open_run(store)
    first.set_terminated("FAILED")
    second = open_run(store)
    run = mlflow.MlflowClient(tracking_uri=store).get_run(second.run_id)
    assert second.resumed
    assert second.run_id == first.run_id
    assert run.info.status == "RUNNING"


def test_metrics_of_a_replayed_epoch_are_logged_once(store):
    first = open_run(store)
    first.log_metrics({"train_loss": 1.0}, step=1)
    first.log_metrics({"train_loss": 0.9}, step=2)
    second = open_run(store)
    assert second.log_metrics({"train_loss": 0.8}, step=2) == 0
    second.log_metrics({"train_loss": 0.7}, step=3)
    assert metric_steps(store, first.run_id, "train_loss") == [1, 2, 3]


def test_a_step_logged_twice_in_one_session_is_skipped_per_key(store):
    tracker = open_run(store)
    tracker.log_metrics({"loss": 1.0}, step=1)
    logged = tracker.log_metrics({"loss": 2.0, "miou": 0.5}, step=1)
    assert logged == 1
    assert metric_steps(store, tracker.run_id, "loss") == [1]
    assert metric_steps(store, tracker.run_id, "miou") == [1]


def test_metric_names_keep_slashes_and_lose_characters_mlflow_refuses(store):
    tracker = open_run(store)
    tracker.log_metrics({"val_iou/building, edifice": 0.25}, step=0)
    run = mlflow.MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.data.metrics == {"val_iou/building_ edifice": 0.25}


def test_sanitize_key_produces_normalised_paths():
    assert sanitize_key("val_iou//sky") == "val_iou/sky"
    assert sanitize_key("/a/b/") == "a/b"
    assert sanitize_key("x/../y") == "x/y"
    assert sanitize_key("lr (poly)") == "lr _poly_"


def test_params_already_logged_with_the_same_value_are_accepted_on_resume(store):
    open_run(store).log_params({"lr": 0.01, "crop": 512})
    resumed = open_run(store)
    resumed.log_params({"lr": 0.01, "crop": 512, "epochs": 80})
    run = mlflow.MlflowClient(tracking_uri=store).get_run(resumed.run_id)
    assert run.data.params == {"lr": "0.01", "crop": "512", "epochs": "80"}


def test_a_changed_param_on_resume_raises_naming_key_old_and_new_value(store):
    open_run(store).log_params({"lr": 0.01})
    with pytest.raises(ParamConflictError, match=r"lr: logged '0\.01', now '0\.02'"):
        open_run(store).log_params({"lr": 0.02, "epochs": 80})
    run = find_run("r50-voc", tracking_uri=store, experiment="tests")
    assert "epochs" not in run.data.params  # nothing is logged when a conflict is raised


def test_a_changed_param_can_be_ignored_keeping_the_logged_value(store):
    open_run(store).log_params({"lr": 0.01})
    open_run(store).log_params({"lr": 0.02, "epochs": 80}, on_conflict="ignore")
    run = find_run("r50-voc", tracking_uri=store, experiment="tests")
    assert run.data.params == {"lr": "0.01", "epochs": "80"}


def test_a_run_opened_with_a_parent_is_nested_and_listed_as_its_child(store):
    parent = open_run(store, "tune-sweep")
    children = [open_run(store, f"trial-{i}", parent_run_id=parent.run_id) for i in range(2)]
    open_run(store, "unrelated")
    found = child_runs(parent.run_id, tracking_uri=store)
    assert [run.info.run_id for run in found] == [child.run_id for child in children]
    assert found[0].data.tags[PARENT_RUN_TAG] == parent.run_id


def test_open_sets_tags_description_and_git_commit(store, monkeypatch):
    monkeypatch.setenv("APCNET_GIT_COMMIT", "abc123")
    tracker = open_run(store, tags={"dataset": "voc"}, description="R50 baseline")
    tags = mlflow.MlflowClient(tracking_uri=store).get_run(tracker.run_id).data.tags
    assert tags["dataset"] == "voc"
    assert tags[DESCRIPTION_TAG] == "R50 baseline"
    assert tags[GIT_COMMIT_TAG] == "abc123"
    assert tags[RUN_NAME_TAG] == "r50-voc"


def test_reopening_without_the_repository_keeps_the_known_git_commit(store, monkeypatch):
    monkeypatch.setenv("APCNET_GIT_COMMIT", "abc123")
    open_run(store)
    monkeypatch.setenv("APCNET_GIT_COMMIT", "unknown")
    tracker = open_run(store)
    tags = mlflow.MlflowClient(tracking_uri=store).get_run(tracker.run_id).data.tags
    assert tags[GIT_COMMIT_TAG] == "abc123"


def test_artifacts_of_every_kind_land_in_the_run(store, tmp_path):
    tracker = open_run(store)
    config_file = tmp_path / "config.yaml"
    config_file.write_text("model: {backbone: resnet50}\n")
    tracker.log_artifact(config_file, "config")
    tracker.log_text("hello", "notes/hello.txt")
    tracker.log_dict({"miou": 0.5}, "metrics.json")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    tracker.log_figure(figure, "curves/loss.png")
    listed = mlflow.MlflowClient(tracking_uri=store).list_artifacts(tracker.run_id, "curves")
    out = tmp_path / "out"
    out.mkdir()
    assert downloaded_text(store, tracker.run_id, "config/config.yaml", out).startswith("model")
    assert downloaded_text(store, tracker.run_id, "notes/hello.txt", out) == "hello"
    assert json.loads(downloaded_text(store, tracker.run_id, "metrics.json", out)) == {"miou": 0.5}
    assert [item.path for item in listed] == ["curves/loss.png"]


def test_artifacts_of_a_sqlite_store_live_beside_the_database(store, tmp_path):
    tracker = open_run(store)
    tracker.log_text("x", "x.txt")
    assert (tmp_path / "mlartifacts" / "tests").is_dir()
    assert list((tmp_path / "mlartifacts" / "tests").rglob("x.txt"))


def test_log_table_writes_csv_and_markdown(store, tmp_path):
    tracker = open_run(store)
    rows = [["background", 0.91234], ["aeroplane", float("nan")]]
    tracker.log_table(rows, ["class", "iou"], "iou.csv")
    tracker.log_table(rows, ["class", "iou"], "iou.md")
    out = tmp_path / "out"
    out.mkdir()
    csv_text = downloaded_text(store, tracker.run_id, "iou.csv", out)
    markdown = downloaded_text(store, tracker.run_id, "iou.md", out)
    assert csv_text.splitlines() == ["class,iou", "background,0.91234", "aeroplane,nan"]
    assert markdown.splitlines() == [
        "| class | iou |",
        "| --- | --- |",
        "| background | 0.9123 |",
        "| aeroplane | nan |",
    ]


def test_log_table_rejects_rows_of_the_wrong_width(store):
    with pytest.raises(ValueError, match="row 0 has 1 cells but there are 2 columns"):
        open_run(store).log_table([["sky"]], ["class", "iou"], "iou.csv")


def test_log_table_writes_console_text_too(store, tmp_path):
    tracker = open_run(store)
    tracker.log_table([["sky", 0.5]], ["class", "iou"], "iou.txt")
    out = tmp_path / "out"
    out.mkdir()
    text = downloaded_text(store, tracker.run_id, "iou.txt", out)
    assert text.splitlines() == ["class     iou", "-----  ------", "sky    0.5000"]


def test_context_manager_ends_the_run_failed_when_the_block_raises(store):
    with pytest.raises(RuntimeError), open_run(store) as tracker:
        raise RuntimeError("boom")
    run = mlflow.MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.info.status == "FAILED"


def test_run_names_with_quotes_are_refused(store):
    with pytest.raises(ValueError, match="contains a quote"):
        open_run(store, "it's")


def test_resolve_tracking_prefers_explicit_values_over_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_tracking("http://tracker:80", "mine") == ("http://tracker:80", "mine")
    assert resolve_tracking(None, None) == ("http://127.0.0.1:5000", "from-env")


def test_resolve_tracking_defaults_to_sqlite_in_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("APCNET_HOME", str(tmp_path))
    assert resolve_tracking(None, None) == (f"sqlite:///{tmp_path / 'mlflow.db'}", "apcnet")


def test_resolve_tracking_makes_a_relative_sqlite_path_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    uri, _ = resolve_tracking("sqlite:///runs/mlflow.db", None)
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def test_git_commit_prefers_the_environment_variable(monkeypatch):
    monkeypatch.setenv("APCNET_GIT_COMMIT", "0123abcd")
    assert git_commit() == "0123abcd"


def test_git_commit_reads_the_repository_head(monkeypatch):
    monkeypatch.delenv("APCNET_GIT_COMMIT", raising=False)
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_commit(root) == head


def test_git_commit_is_unknown_outside_a_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("APCNET_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) == "unknown"


# ------------------------------------------------------------------------------------------
# Tables: one (columns, rows), three renderings


TABLE_COLUMNS = ["class", "iou", "pixels"]
TABLE_ROWS = [["background", 0.91234, 1200], ["aeroplane", float("nan"), 35]]


def test_a_text_table_pads_columns_and_right_aligns_numbers():
    assert text_table(TABLE_COLUMNS, TABLE_ROWS).splitlines() == [
        "class          iou  pixels",
        "----------  ------  ------",
        "background  0.9123    1200",
        "aeroplane      nan      35",
    ]


def test_csv_keeps_full_precision_while_markdown_rounds_like_the_text_table():
    assert csv_table(TABLE_COLUMNS, TABLE_ROWS).splitlines()[1] == "background,0.91234,1200"
    assert markdown_table(TABLE_COLUMNS, TABLE_ROWS).splitlines()[2] == (
        "| background | 0.9123 | 1200 |"
    )


def test_small_floats_keep_three_significant_digits_in_a_text_table():
    lines = text_table(["lr"], [[0.003], [2.5e-9]]).splitlines()
    assert [line.strip() for line in lines[2:]] == ["0.003", "2.5e-09"]


# ------------------------------------------------------------------------------------------
# Waiting out a store that does not answer

# How long the tests below keep a SQLite store locked: longer than the 20 s SQLite itself waits
# for a lock in MLflow's store, so that only the retry policy can wait it out.
LOCK_HELD_S = 25.0


@pytest.fixture
def mlflow_http_settings_unset() -> Iterator[None]:
    """MLflow's HTTP settings unset, as for a user who never set them; put back afterwards
    (`tracking_client` sets them process-wide)."""
    saved = {name: os.environ.pop(name, None) for name in HTTP_SETTINGS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def sqlite_locked(store: str) -> Iterator[sqlite3.Connection]:
    """The store's database held in an exclusive transaction by another connection, as by a
    writer in another process; the lock ends with the block, or when the connection rolls back."""
    connection = sqlite3.connect(
        store.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield connection
    finally:
        connection.close()


@pytest.mark.usefixtures("mlflow_http_settings_unset")
def test_one_request_with_mlflows_own_retries_fits_in_the_default_budget():
    tracking_client("http://tracker:5000")
    assert {name: os.environ[name] for name in HTTP_SETTINGS} == HTTP_SETTINGS
    assert http_request_bound_s() <= DEFAULT_POLICY.budget_s


@pytest.mark.usefixtures("mlflow_http_settings_unset")
def test_a_client_for_a_server_keeps_the_mlflow_http_settings_the_user_set():
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "45"
    tracking_client("http://tracker:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "45"


@pytest.mark.usefixtures("mlflow_http_settings_unset")
def test_a_client_for_a_sqlite_store_leaves_mlflows_http_settings_alone(store):
    tracking_client(store)
    assert not any(name in os.environ for name in HTTP_SETTINGS)


@pytest.mark.usefixtures("mlflow_http_settings_unset")
@pytest.mark.integration
def test_an_unreachable_tracking_server_raises_one_error_naming_it_within_the_default_budget():
    url = f"http://127.0.0.1:{free_local_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=re.escape(f"curl {url}/health")):
        RunTracker.open("nowhere", tracking_uri=url, experiment="tests")
    assert time.monotonic() - started <= DEFAULT_POLICY.budget_s


@pytest.mark.usefixtures("mlflow_http_settings_unset")
@pytest.mark.integration
def test_an_unreachable_server_is_retried_for_a_longer_budget_but_never_past_it():
    url = f"http://127.0.0.1:{free_local_port()}"
    client = tracking_client(url)
    policy = RetryPolicy(budget_s=50.0)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=re.escape(url)):
        call_with_retry(client.search_experiments, url, policy)
    waited = time.monotonic() - started
    # One request's backoff sleeps alone take 12 s or more; a second request waited as long.
    assert 20.0 < waited <= policy.budget_s


def test_an_error_that_waiting_cannot_clear_is_raised_at_once(store):
    open_run(store)
    with pytest.raises(MlflowException, match="not found"):
        child_runs("0" * 32, tracking_uri=store)


@pytest.mark.integration
def test_a_sqlite_store_locked_past_the_budget_raises_advising_a_tracking_server(store):
    tracker = open_run(store, retry=RetryPolicy(budget_s=1.0))
    with (
        sqlite_locked(store),
        pytest.raises(TrackingUnavailableError, match=r"locked.*run `mlflow server`"),
    ):
        tracker.log_metrics({"loss": 1.0}, step=1)


@pytest.mark.integration
def test_a_sqlite_store_locked_for_less_than_the_budget_is_waited_out(store):
    tracker = open_run(store, retry=RetryPolicy(budget_s=60.0))
    with sqlite_locked(store) as lock:
        release = threading.Timer(LOCK_HELD_S, lock.rollback)
        release.start()
        started = time.monotonic()
        try:
            assert tracker.log_metrics({"loss": 1.0}, step=1) == 1
        finally:
            release.cancel()
        assert time.monotonic() - started >= LOCK_HELD_S - 1.0
    assert metric_steps(store, tracker.run_id, "loss") == [1]


# ------------------------------------------------------------------------------------------
# A real tracking server


@pytest.mark.integration
def test_runs_resume_through_a_tracking_server(tmp_path):
    server = start_tracking_server(tmp_path)
    url = server.url
    try:
        server.wait_until_serving("/health")
        first = RunTracker.open("served", tracking_uri=url, experiment="tests")
        first.log_metrics({"loss": 1.0}, step=1)
        first.log_text("served", "note.txt")
        second = RunTracker.open("served", tracking_uri=url, experiment="tests")
        second.log_metrics({"loss": 0.5}, step=1)
        second.log_metrics({"loss": 0.4}, step=2)
        assert second.run_id == first.run_id
        assert metric_steps(url, first.run_id, "loss") == [1, 2]
        assert list((tmp_path / "artifacts").rglob("note.txt"))
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.usefixtures("mlflow_http_settings_unset")
def test_a_tracking_server_that_is_still_starting_is_waited_out(tmp_path):
    server = start_tracking_server(tmp_path)
    url = server.url
    try:
        client = tracking_client(url)
        experiments = call_with_retry(client.search_experiments, url, RetryPolicy(budget_s=180))
        assert [experiment.name for experiment in experiments] == ["Default"]
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# One node's utilisation


def test_a_node_sample_has_mlflow_system_metric_names():
    sample = NodeSampler().sample()
    assert {
        "cpu_utilization_percentage",
        "system_memory_usage_megabytes",
        "system_memory_usage_percentage",
        "disk_usage_percentage",
        "network_receive_megabytes",
    } <= sample.keys()
    assert 0 <= sample["system_memory_usage_percentage"] <= 100
    assert metric_prefix("3f2a9c1bdeadbeef") == "system/node-3f2a9c1b/"


def test_a_node_reporter_logs_samples_on_the_run_clock_under_its_node(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.open("sampled", tracking_uri=uri, experiment="tests")
    target = NodeMetricsTarget(tracker.run_id, uri, 0.5, tracker.started_unix_s)
    reporter = NodeMetricsReporter(target, "abcdef0123456789")
    time.sleep(1.6)
    reporter.stop()
    steps = metric_steps(uri, tracker.run_id, "system/node-abcdef01/cpu_utilization_percentage")
    assert len(steps) >= 3 and steps == sorted(steps)
    assert reporter.failed_logs == 0 and not reporter.pending


def test_a_node_reporter_keeps_sampling_while_its_store_fails(tmp_path):
    # A SQLite store in a folder that does not exist: every log fails.
    uri = f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"
    reporter = NodeMetricsReporter(NodeMetricsTarget("0" * 32, uri, 0.2, time.time()), "ab" * 8)
    deadline = time.monotonic() + 30
    while reporter.failed_logs < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    reporter.stop()
    assert reporter.failed_logs >= 2 and len(reporter.pending) >= 2
    assert reporter.logged_samples == 0
