"""Compare runs in MLflow: a table sorted by a metric, and their validation curves.

Only the MLflow client is used, with the tracking URI that `resolve_tracking` picks, so the
same code reads a local SQLite store and a tracking server.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run

from pipeline.errors import UserError
from pipeline.storage import local_temporary_sibling, publish_local_file
from pipeline.tracking.retry import call_with_retry, tracking_client
from pipeline.tracking.runs import children_query, find_run, resolve_tracking, search_runs
from pipeline.tracking.tables import text_table
from pipeline.tracking.tags import RUN_NAME_TAG, TRIAL_STATUS_TAG

_RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# Parameters worth a column: the knobs a search varies.
SUMMARY_PARAMETERS = (
    ("scales", "model.pool_scales"),
    ("gla", "model.gla"),
    ("lr", "optimization.lr"),
)


class RunNotFoundError(UserError, LookupError):
    """The run or experiment to compare does not exist in the tracking store."""


@dataclass(frozen=True)
class RunSummary:
    """One MLflow run reduced to what the comparison shows.

    `best` is the best value of the metric over the run's history (max or min by mode),
    `curve` the metric per step (epoch) as (step, value) pairs in step order, `epochs` the
    last step that logged it.
    """

    run_id: str
    name: str
    status: str
    trial_status: str
    parameters: dict[str, str]
    best: float
    epochs: int
    curve: tuple[tuple[int, float], ...]


def resolve_parent_run_id(
    parent: str, *, tracking_uri: str | None = None, experiment: str | None = None
) -> str:
    """A run id from `parent`, which is either a run id or an `apcnet.run_name`."""
    if _RUN_ID_PATTERN.match(parent):
        return parent
    run = find_run(parent, tracking_uri=tracking_uri, experiment=experiment)
    if run is None:
        uri, name = resolve_tracking(tracking_uri, experiment)
        raise RunNotFoundError(
            f"no MLflow run named {parent!r} in experiment {name!r} at {uri}; pass a run id "
            "or the name of a search (jobs/tune.py --name), and check --experiment"
        )
    return run.info.run_id


def collect_runs(
    metric: str = "val_miou",
    *,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    mode: str = "max",
) -> list[RunSummary]:
    """The runs of `experiment` (or the children of `parent_run_id`) that logged `metric`,
    best first. Runs without the metric are left out."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    uri, experiment_name = resolve_tracking(tracking_uri, experiment)
    client = tracking_client(uri)
    if parent_run_id is not None:
        parent = call_with_retry(lambda: client.get_run(parent_run_id), uri)
        experiment_id, query = parent.info.experiment_id, children_query(parent_run_id)
    else:
        found = call_with_retry(lambda: client.get_experiment_by_name(experiment_name), uri)
        if found is None:
            raise RunNotFoundError(
                f"no MLflow experiment {experiment_name!r} at {uri}; pass --experiment with an "
                "existing name or set MLFLOW_TRACKING_URI to the store that holds it"
            )
        experiment_id, query = found.experiment_id, ""
    runs = search_runs(client, uri, experiment_id, query)
    summaries = [
        _summarise(client, uri, run, metric, mode) for run in runs if metric in run.data.metrics
    ]
    return sort_runs(summaries, mode)


def sort_runs(summaries: list[RunSummary], mode: str = "max") -> list[RunSummary]:
    """Best first; runs whose metric is NaN go last."""

    def key(summary: RunSummary) -> tuple[bool, float]:
        if math.isnan(summary.best):
            return (True, 0.0)
        return (False, -summary.best if mode == "max" else summary.best)

    return sorted(summaries, key=key)


def format_runs_table(summaries: list[RunSummary], metric: str) -> str:
    """A plain-text table: rank, name, the searched parameters, best metric, epochs, status."""
    columns = ["#", "run", *(label for label, _ in SUMMARY_PARAMETERS)]
    columns += [f"best {metric}", "epochs", "status"]
    rows = [
        [
            rank,
            summary.name,
            *(_short(summary.parameters.get(label, "")) for label, _ in SUMMARY_PARAMETERS),
            summary.best,
            summary.epochs,
            summary.trial_status or summary.status,
        ]
        for rank, summary in enumerate(summaries, start=1)
    ]
    return text_table(columns, rows)


def _short(value: str) -> str:
    """A parameter as shown in a table: sampled floats to 3 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or "." not in value else f"{number:.3g}"


def plot_curves(summaries: list[RunSummary], metric: str, path: str | Path) -> Path:
    """Write a PNG with one line per run: `metric` against epoch. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    from matplotlib import pyplot

    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for summary in summaries:
        steps = [step for step, _ in summary.curve]
        values = [value for _, value in summary.curve]
        axes.plot(steps, values, marker="o", label=f"{summary.name} ({summary.best:.3f})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch, {len(summaries)} runs")
    axes.grid(True, alpha=0.3)
    if summaries:
        axes.legend(fontsize="small")
    figure.tight_layout()
    # Write beside the target and rename, so a crash never leaves a truncated PNG.
    partial = local_temporary_sibling(output)
    try:
        figure.savefig(partial, format="png", dpi=100)
        publish_local_file(partial, output)
    finally:
        pyplot.close(figure)
        partial.unlink(missing_ok=True)
    return output


def _summarise(
    client: mlflow.MlflowClient, tracking_uri: str, run: Run, metric: str, mode: str
) -> RunSummary:
    history = call_with_retry(
        lambda: client.get_metric_history(run.info.run_id, metric), tracking_uri
    )
    latest_per_step: dict[int, float] = {}
    for entry in sorted(history, key=lambda entry: entry.timestamp):
        latest_per_step[entry.step] = entry.value
    curve = tuple(sorted(latest_per_step.items()))
    finite = [value for _, value in curve if not math.isnan(value)]
    best = (max(finite) if mode == "max" else min(finite)) if finite else math.nan
    tags = run.data.tags
    parameters = {label: run.data.params.get(key, "") for label, key in SUMMARY_PARAMETERS}
    return RunSummary(
        run_id=run.info.run_id,
        name=tags.get(RUN_NAME_TAG) or run.info.run_name or run.info.run_id,
        status=run.info.status,
        trial_status=tags.get(TRIAL_STATUS_TAG, ""),
        parameters=parameters,
        best=best,
        epochs=curve[-1][0] if curve else 0,
        curve=curve,
    )
