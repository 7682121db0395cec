"""MLflow tracking: one MLflow run per named training run, found again by its name.

Everything here goes through `mlflow.MlflowClient` with explicit run ids, never through
`mlflow.start_run()`'s process-global active run, so it is safe inside Ray Train workers and
Tune trials, where several runs may be open in one process.

Identity: a run is found by the tag `apcnet.run_name`. Resubmitting the same name reopens the
same MLflow run, and `RunTracker.log_metrics` skips (key, step) pairs that are already there,
so an epoch that is replayed after a restart is never logged twice.

Search: `search_runs` is the one run search of the project (every page, each request under the
retry policy); `run_name_query` and `children_query` are its filters.

Provenance: every run is tagged with the commit of the code it came from (`git_commit`).

Retries: every call goes through `pipeline.tracking.retry` (a store that does not answer is
waited out for at most the `RetryPolicy` budget, then `TrackingUnavailableError` names its URI).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError
from pipeline.storage import apcnet_home
from pipeline.tracking.conventions import create_experiment, tag_experiment_kind
from pipeline.tracking.retry import DEFAULT_POLICY, RetryPolicy, call_with_retry, tracking_client
from pipeline.tracking.tables import table_for_file
from pipeline.tracking.tags import DESCRIPTION_TAG, GIT_COMMIT_TAG, PARENT_RUN_TAG, RUN_NAME_TAG

DEFAULT_EXPERIMENT = "apcnet"
GIT_COMMIT_ENV = "APCNET_GIT_COMMIT"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's own limits (mlflow.utils.validation), repeated so batches are cut before it refuses.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_INVALID_NAME_CHARACTERS = re.compile(r"[^/\w.\- :]+")

T = TypeVar("T")


class ParamConflictError(UserError, ValueError):
    """A resumed run was asked to log a parameter with a value different from the logged one."""


def resolve_tracking(tracking_uri: str | None, experiment: str | None) -> tuple[str, str]:
    """The tracking URI and experiment name to use, as (uri, experiment).

    Precedence: the explicit value, then `MLFLOW_TRACKING_URI` / `MLFLOW_EXPERIMENT_NAME`,
    then a SQLite store `sqlite:////<APCNET_HOME>/mlflow.db` and the experiment "apcnet".
    A relative SQLite path is made absolute against the current folder, so a driver can
    resolve once and hand the same store to Ray workers whose working folder differs.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        uri = f"sqlite:///{apcnet_home() / 'mlflow.db'}"
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    return _absolute_sqlite_uri(uri), name


def ui_command(tracking_uri: str) -> str:
    """How a person opens the MLflow UI on `tracking_uri`: a server's address, or the
    `mlflow ui` command that serves a local store (then http://127.0.0.1:5000)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}   # then http://127.0.0.1:5000"


def sanitize_key(key: str) -> str:
    """A metric or parameter name MLflow accepts: runs of refused characters become "_".

    MLflow allows letters, digits, "_", "-", ".", " ", ":" and "/", and refuses names that
    are not normalised paths ("a//b", "/a", "a/", "..").
    """
    cleaned = _INVALID_NAME_CHARACTERS.sub("_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return "/".join(parts) or "_"


def find_run(
    run_name: str, *, tracking_uri: str | None = None, experiment: str | None = None
) -> Run | None:
    """The oldest active run tagged `apcnet.run_name = run_name`, or None if there is none."""
    uri, client, experiment_id = _client_and_experiment(tracking_uri, experiment, create=False)
    if experiment_id is None:
        return None
    return _find_run(client, uri, experiment_id, run_name)


def child_runs(parent_run_id: str, *, tracking_uri: str | None = None) -> list[Run]:
    """Runs nested under `parent_run_id` (e.g. one per Tune trial), oldest first."""
    uri, _ = resolve_tracking(tracking_uri, None)
    client = tracking_client(uri)
    parent = call_with_retry(lambda: client.get_run(parent_run_id), uri)
    return search_runs(client, uri, parent.info.experiment_id, children_query(parent_run_id))


def search_runs(
    client: mlflow.MlflowClient,
    tracking_uri: str,
    experiment_id: str,
    query: str,
    *,
    max_results: int | None = None,
) -> list[Run]:
    """The runs of one experiment that match the MLflow filter `query`, oldest first.

    Every page of results, or only the first `max_results`. Each request follows the retry
    policy (`pipeline.tracking.retry`); `tracking_uri` names the store in its error.
    """
    runs: list[Run] = []
    page_token = None
    while True:
        page_size = None if max_results is None else max_results - len(runs)
        page = call_with_retry(
            lambda token=page_token, size=page_size: client.search_runs(
                [experiment_id],
                query,
                order_by=["attributes.start_time ASC"],
                page_token=token,
                **({} if size is None else {"max_results": size}),
            ),
            tracking_uri,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token or (max_results is not None and len(runs) >= max_results):
            return runs


def run_name_query(run_name: str) -> str:
    """The MLflow filter for runs named `run_name` (`apcnet.run_name` tag)."""
    return f"tags.`{RUN_NAME_TAG}` = '{run_name}'"


def children_query(parent_run_id: str) -> str:
    """The MLflow filter for runs nested under `parent_run_id`."""
    return f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"


def git_commit(path: str | Path | None = None) -> str:
    """The commit the code runs from: `APCNET_GIT_COMMIT` when set, else `git rev-parse HEAD`.

    `path` defaults to the folder of the `pipeline` package, inside the repository. Returns
    "unknown" where git or the repository is missing, e.g. inside a `ray job submit` working
    folder, which carries no `.git`: there the submitter should pass the commit in the job's
    env_vars.
    """
    from_env = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if from_env:
        return from_env
    folder = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


class RunTracker:
    """One MLflow run, opened by name; a thin layer over `MlflowClient` calls.

    Use `RunTracker.open(...)`, not the constructor. As a context manager it ends the run as
    FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises.
    """

    def __init__(
        self,
        client: mlflow.MlflowClient,
        tracking_uri: str,
        run: Run,
        resumed: bool,
        retry: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._client = client
        self._tracking_uri = tracking_uri
        self._retry = retry
        self._run_id = run.info.run_id
        self._experiment_id = run.info.experiment_id
        self._started_unix_s = run.info.start_time / 1000
        self._resumed = resumed
        self._params: dict[str, str] = dict(run.data.params)
        self._metric_keys_at_open = set(run.data.metrics)
        # key -> steps already in the store; filled lazily, one history read per key.
        self._logged_steps: dict[str, set[int]] = {}

    @classmethod
    def open(
        cls,
        run_name: str,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        tags: Mapping[str, object] | None = None,
        parent_run_id: str | None = None,
        description: str | None = None,
        retry: RetryPolicy = DEFAULT_POLICY,
    ) -> RunTracker:
        """Find the run named `run_name` in `experiment`, or create it; mark it RUNNING.

        A new run is nested under `parent_run_id` when given. A finished or failed run is
        reopened (resume). `tags` are set either way, plus the git commit of the code
        (`git_commit()`, unless `tags` names it; "unknown" never replaces a known commit).
        tracking_uri / experiment of None are resolved by `resolve_tracking`. `retry` bounds
        the wait for an unreachable store in every later call (a long run may wait out a
        restarting server longer than a job that only reads).
        """
        _check_run_name(run_name)
        uri, client, experiment_id = _client_and_experiment(tracking_uri, experiment, create=True)
        assert experiment_id is not None  # create=True always yields an experiment
        run = _find_run(client, uri, experiment_id, run_name)
        resumed = run is not None
        all_tags = dict(tags or {})
        if GIT_COMMIT_TAG not in all_tags:
            commit = git_commit()
            # A process without the repository (a Ray worker node) must not erase a known commit.
            if commit != "unknown" or run is None or GIT_COMMIT_TAG not in run.data.tags:
                all_tags[GIT_COMMIT_TAG] = commit
        if description is not None:
            all_tags[DESCRIPTION_TAG] = description
        if run is None:
            creation_tags = {RUN_NAME_TAG: run_name}
            if parent_run_id is not None:
                creation_tags[PARENT_RUN_TAG] = parent_run_id
            run = call_with_retry(
                lambda: client.create_run(experiment_id, tags=creation_tags, run_name=run_name),
                uri,
            )
        elif run.info.status != "RUNNING":
            call_with_retry(lambda: client.update_run(run.info.run_id, status="RUNNING"), uri)
        tracker = cls(client, uri, run, resumed, retry)
        tracker.set_tags(all_tags)
        return tracker

    @classmethod
    def attach(
        cls, run_id: str, *, tracking_uri: str | None = None, retry: RetryPolicy = DEFAULT_POLICY
    ) -> RunTracker:
        """The existing run `run_id`, to add to it (an epoch's metrics, an artifact made after
        the run ended) without reopening it: its status stays as it is. `retry` as in `open`.
        Raises MlflowException when the store has no such run."""
        uri, _ = resolve_tracking(tracking_uri, None)
        client = tracking_client(uri)
        run = call_with_retry(lambda: client.get_run(run_id), uri, retry)
        return cls(client, uri, run, resumed=True, retry=retry)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def experiment_id(self) -> str:
        return self._experiment_id

    @property
    def started_unix_s(self) -> float:
        """When the run was first created (Unix seconds); a resumed run keeps it."""
        return self._started_unix_s

    @property
    def resumed(self) -> bool:
        """True when `open` found an existing run rather than creating one."""
        return self._resumed

    def log_params(self, flat: Mapping[str, object], *, on_conflict: str = "raise") -> None:
        """Log flat parameters; ones already logged with the same value are skipped.

        MLflow never changes a logged parameter. A value that differs from the logged one
        raises `ParamConflictError` naming every such key (nothing is logged then), unless
        `on_conflict="ignore"`, which keeps the logged values and logs only the new keys.
        """
        if on_conflict not in ("raise", "ignore"):
            raise ValueError(f"on_conflict must be 'raise' or 'ignore', got {on_conflict!r}")
        new_params: dict[str, str] = {}
        conflicts: list[str] = []
        for raw_key, raw_value in flat.items():
            key = sanitize_key(raw_key)
            value = str(raw_value)[:MAX_PARAM_VALUE_LENGTH]
            if key not in self._params:
                new_params[key] = value
            elif self._params[key] != value:
                conflicts.append(f"{key}: logged {self._params[key]!r}, now {value!r}")
        if conflicts and on_conflict == "raise":
            raise ParamConflictError(
                f"MLflow run {self._run_id} already has different values for "
                f"{len(conflicts)} parameter(s): " + "; ".join(conflicts) + ". A resumed run "
                "must keep its configuration: use a new run name for a new configuration, "
                "or log with on_conflict='ignore' to keep the logged values."
            )
        params = [Param(key, value) for key, value in new_params.items()]
        for batch in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self._call(lambda batch=batch: self._client.log_batch(self._run_id, params=batch))
        self._params.update(new_params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> int:
        """Log metrics at `step`, skipping every key that already has a value at that step.

        Keys are sanitised (`sanitize_key`); "/" is kept, so `val_iou/<class>` groups in the
        MLflow UI. Values may be anything `float()` accepts (tensors, numpy scalars), NaN
        included. Returns how many values were logged.
        """
        timestamp = int(time.time() * 1000)
        to_log: list[Metric] = []
        for raw_key, raw_value in metrics.items():
            key = sanitize_key(raw_key)
            logged = self._steps_logged_for(key)
            if step in logged:
                continue
            to_log.append(Metric(key, float(raw_value), timestamp, int(step)))
            logged.add(step)
        for batch in _chunks(to_log, MAX_METRICS_PER_BATCH):
            self._call(lambda batch=batch: self._client.log_batch(self._run_id, metrics=batch))
        return len(to_log)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        run_tags = [RunTag(str(key), str(value)) for key, value in tags.items()]
        for batch in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            self._call(lambda batch=batch: self._client.log_batch(self._run_id, tags=batch))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under `artifact_path` of the run."""
        path = Path(local_path)
        if not path.exists():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or folder")
        if path.is_dir():
            self._call(lambda: self._client.log_artifacts(self._run_id, str(path), artifact_path))
        else:
            self._call(lambda: self._client.log_artifact(self._run_id, str(path), artifact_path))

    def log_inputs(self, datasets: Sequence[Any]) -> None:  # conventions.split_inputs
        self._call(lambda: self._client.log_inputs(self._run_id, datasets=list(datasets)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(lambda: self._client.log_text(self._run_id, text, artifact_file))

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Save a dict as JSON (or YAML when `artifact_file` ends in .yaml/.yml)."""
        self._call(lambda: self._client.log_dict(self._run_id, dict(dictionary), artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an image artifact (format from the file's suffix)."""
        self._call(lambda: self._client.log_figure(self._run_id, figure, artifact_file))

    def log_table(
        self, rows: Sequence[Sequence[object]], columns: Sequence[str], artifact_file: str
    ) -> None:
        """Save a table (e.g. per-class IoU) as CSV (`.csv`), markdown (`.md`) or console text
        (`.txt`), rendered by `pipeline.tracking.tables`."""
        try:
            text = table_for_file(columns, rows, artifact_file)
        except ValueError as error:
            raise ValueError(f"log_table({artifact_file!r}): {error}") from error
        self.log_text(text, artifact_file)

    def set_terminated(self, status: str = "FINISHED", *, only_if_running: bool = False) -> None:
        """End the run with `status`; with only_if_running, leave an already ended run alone.

        The latter is for a process that is being torn down: under Ray Tune the driver's
        callback may already have recorded the trial's real outcome.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, got {status!r}")
        if only_if_running:
            current = self._call(lambda: self._client.get_run(self._run_id)).info.status
            if current != "RUNNING":
                return
        self._call(lambda: self._client.set_terminated(self._run_id, status=status))

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.set_terminated("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_terminated("KILLED")
        else:
            self.set_terminated("FAILED")

    def _call(self, call: Callable[[], T]) -> T:
        return call_with_retry(call, self._tracking_uri, self._retry)

    def _steps_logged_for(self, key: str) -> set[int]:
        if key not in self._logged_steps:
            steps: set[int] = set()
            if key in self._metric_keys_at_open:
                history = self._call(lambda: self._client.get_metric_history(self._run_id, key))
                steps = {metric.step for metric in history}
            self._logged_steps[key] = steps
        return self._logged_steps[key]


def _client_and_experiment(
    tracking_uri: str | None, experiment: str | None, *, create: bool
) -> tuple[str, mlflow.MlflowClient, str | None]:
    """The resolved URI, a client for it and the experiment's id (None if absent, create=False)."""
    uri, name = resolve_tracking(tracking_uri, experiment)
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    client = tracking_client(uri)
    found = call_with_retry(lambda: client.get_experiment_by_name(name), uri)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} at {uri} is deleted: restore it "
                f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or "
                "choose another experiment name (tracking.experiment / MLFLOW_EXPERIMENT_NAME)"
            )
        if create:
            tag_experiment_kind(client, uri, found)
        return uri, client, found.experiment_id
    if not create:
        return uri, client, None
    # A local SQLite store gets artifacts beside the database; a server chooses its own.
    location = None
    if database is not None:
        location = (database.parent / "mlartifacts" / sanitize_key(name)).as_uri()
    try:
        return uri, client, create_experiment(client, uri, name, location)
    except MlflowException as error:
        # Another worker created it between our lookup and our create.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        found = call_with_retry(lambda: client.get_experiment_by_name(name), uri)
        return uri, client, found.experiment_id


def _find_run(
    client: mlflow.MlflowClient, tracking_uri: str, experiment_id: str, run_name: str
) -> Run | None:
    runs = search_runs(client, tracking_uri, experiment_id, run_name_query(run_name), max_results=1)
    return runs[0] if runs else None


def _check_run_name(run_name: str) -> None:
    # The name goes into a search filter between quotes, and is a checkpoint folder name.
    if not run_name or any(character in run_name for character in "'\"`\\"):
        raise ValueError(
            f"run name {run_name!r} is empty or contains a quote or backslash; "
            "choose a name of letters, digits, '-', '_' and '.'"
        )


def _absolute_sqlite_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return f"{prefix}{Path(uri[len(prefix) :]).resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return Path(uri[len(prefix) :])


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
