"""MLflow bookkeeping of a search: trial statuses, the trials table, the best trial.

A search is one parent MLflow run named like the search; every trial is a nested child run
named `<search>-<trial id>`, opened by the trial itself and filled by the training job. A trial
that ASHA stops is killed mid-training and cannot mark its own run, so `TrialStatusCallback`
does it from the Tune driver once the trial is over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from pipeline.config.search import TuneSection
from pipeline.tracking.runs import RunTracker
from pipeline.tracking.tables import text_table
from pipeline.tracking.tags import (
    BEST_PARAMETER_TAG_PREFIX,
    BEST_PARAMETERS_TAG,
    BEST_RUN_NAME_TAG,
    BEST_TRIAL_TAG,
    EPOCHS_RUN_TAG,
    TRIAL_STATUS_TAG,
)
from pipeline.train.run_folder import is_reported_number
from pipeline.tune.space import PARAMETER_FIELDS, describe_parameters

COMPLETED = "completed"
STOPPED_EARLY = "stopped_early"
ERRORED = "error"
UNFINISHED = "unfinished"
# MLflow run status that goes with each trial status.
RUN_STATUS = {COMPLETED: "FINISHED", STOPPED_EARLY: "KILLED", ERRORED: "FAILED"}


@dataclass(frozen=True)
class TrackingTarget:
    """Where a search's runs go: the resolved MLflow store and experiment."""

    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class TrialRow:
    """One line of the trials table.

    parameters: the trial's sampled values, keyed like `pipeline.tune.space.PARAMETER_FIELDS`.
    best_metric: the best value of the search metric over the epochs it ran (NaN if none).
    """

    trial_id: str
    run_name: str
    parameters: dict[str, Any]
    epochs_run: int
    best_metric: float
    status: str


def trial_run_name(search_name: str, trial_id: str) -> str:
    """The training run (and MLflow child run) name of one trial."""
    return f"{search_name}-{trial_id}"


def classify_trial(epochs_run: int, planned_epochs: int, *, errored: bool, finished: bool) -> str:
    """completed, stopped_early (ended by the scheduler before its last epoch), error, or
    unfinished (interrupted search, to be resumed)."""
    if errored:
        return ERRORED
    if not finished:
        return UNFINISHED
    return COMPLETED if epochs_run >= planned_epochs else STOPPED_EARLY


def epochs_of(result: Mapping[str, Any] | None) -> int:
    """Epochs a trial reported: the training loop's `epoch`, else Tune's iteration count."""
    if not result:
        return 0
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


class TrialStatusCallback(Callback):
    """Marks each trial's MLflow child run when the trial ends (runs on the Tune driver).

    Tags `apcnet.trial_status` with completed / stopped_early / error and ends the run as
    FINISHED / KILLED / FAILED. Pickled with the experiment, so it survives a resume.
    """

    def __init__(
        self, search_name: str, target: TrackingTarget, parent_run_id: str, planned_epochs: int
    ) -> None:
        self.search_name = search_name
        self.target = target
        self.parent_run_id = parent_run_id
        self.planned_epochs = planned_epochs

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        status = classify_trial(
            epochs_of(trial.last_result), self.planned_epochs, errored=False, finished=True
        )
        self._mark(trial, status)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._mark(trial, ERRORED)

    def _mark(self, trial: Trial, status: str) -> None:
        tracker = RunTracker.open(
            trial_run_name(self.search_name, trial.trial_id),
            tracking_uri=self.target.tracking_uri,
            experiment=self.target.experiment,
            parent_run_id=self.parent_run_id,
        )
        tracker.set_tags({TRIAL_STATUS_TAG: status, EPOCHS_RUN_TAG: epochs_of(trial.last_result)})
        tracker.set_terminated(RUN_STATUS[status])


def result_line(trial_id: str, result: Mapping[str, Any], metric: str, planned_epochs: int) -> str:
    """A trial's line for one reported epoch: `trial <id> epoch E/P:` then the search metric,
    `train_loss` and `val_miou`, each where the epoch has a value (val_miou is NaN in an epoch
    without validation)."""
    parts = [f"trial {trial_id} epoch {epochs_of(result)}/{planned_epochs}:"]
    for key in dict.fromkeys((metric, "train_loss", "val_miou")):
        value = result.get(key)
        if is_reported_number(value):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts)


class TrialEventLines(Callback):
    """The search's console when quiet: one line per trial event (started with its
    parameters, each epoch's result, completed or stopped early with its best metric,
    failed), printed by the Tune driver in place of Tune's periodic status tables. Pickled
    with the experiment."""

    def __init__(self, tune_section: TuneSection, planned_epochs: int) -> None:
        self.metric = tune_section.metric
        self.mode = tune_section.mode
        self.planned_epochs = planned_epochs
        self.best: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        print(f"trial {trial.trial_id} started: {describe_parameters(trial.config)}", flush=True)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        value = result.get(self.metric)
        if is_reported_number(value):
            best = self.best.get(trial.trial_id, value)
            pick = max if self.mode == "max" else min
            self.best[trial.trial_id] = pick(best, value)
        print(result_line(trial.trial_id, result, self.metric, self.planned_epochs), flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        epochs = epochs_of(trial.last_result)
        status = classify_trial(epochs, self.planned_epochs, errored=False, finished=True)
        best = self.best.get(trial.trial_id, math.nan)
        print(
            f"trial {trial.trial_id} {status.replace('_', ' ')} after {epochs} epochs: "
            f"best {self.metric} {best:.4f}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        epochs = epochs_of(trial.last_result)
        where = f" (traceback in {trial.error_file})" if trial.error_file else ""
        print(f"trial {trial.trial_id} failed after {epochs} epochs{where}", flush=True)


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best `best_metric` (NaN never wins), or None."""
    scored = [row for row in rows if not math.isnan(row.best_metric)]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda row: row.best_metric)


def trials_table(
    rows: list[TrialRow], metric: str, mode: str = "max"
) -> tuple[list[str], list[list[object]]]:
    """The trials table as (columns, rows), best first (trials without a value last).

    Columns: trial, one per searched dimension, epochs, best_<metric>, status. Every dimension
    any trial has gets a column, also one whose value happens to be the same in every trial:
    it is still part of what was searched, and the columns stay the same when a resumed
    search adds trials. Dimensions come in `PARAMETER_FIELDS` order, unknown keys after them.
    """
    present = {key for row in rows for key in row.parameters}
    dimensions = [key for key in PARAMETER_FIELDS if key in present]
    dimensions += sorted(present - set(dimensions))
    columns = ["trial", *dimensions, "epochs", f"best_{metric}", "status"]
    sign = -1.0 if mode == "max" else 1.0
    ordered = sorted(
        rows,
        key=lambda row: (math.isnan(row.best_metric), sign * _finite_or_zero(row.best_metric)),
    )
    cells = [
        [
            row.trial_id,
            *(row.parameters.get(key) for key in dimensions),
            row.epochs_run,
            row.best_metric,
            row.status,
        ]
        for row in ordered
    ]
    return columns, cells


def format_trials_table(rows: list[TrialRow], metric: str, mode: str = "max") -> str:
    """The trials table as printed at the end of a search (see `trials_table`)."""
    return text_table(*trials_table(rows, metric, mode))


def record_search_result(
    parent: RunTracker,
    rows: list[TrialRow],
    *,
    metric: str,
    mode: str,
    best_config: Mapping[str, Any] | None,
) -> TrialRow | None:
    """Store the trials table and the best trial (its parameters, config and metric) on the
    parent run. Returns the best row."""
    columns, cells = trials_table(rows, metric, mode)
    parent.log_table(cells, columns, "trials.csv")
    parent.log_table(cells, columns, "trials.txt")
    best = best_row(rows, mode)
    if best is None:
        return None
    parent.set_tags(
        {
            BEST_TRIAL_TAG: best.trial_id,
            BEST_RUN_NAME_TAG: best.run_name,
            BEST_PARAMETERS_TAG: describe_parameters(best.parameters),
            **{
                f"{BEST_PARAMETER_TAG_PREFIX}{key}": value for key, value in best.parameters.items()
            },
        }
    )
    # Step = trials seen so far: a resumed search logs its new best without clashing.
    parent.log_metrics({f"best_{metric}": best.best_metric}, step=len(rows))
    if best_config is not None:
        parent.log_dict(dict(best_config), "best_config.yaml")
    return best


def _finite_or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value
