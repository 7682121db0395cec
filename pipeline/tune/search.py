"""Ray Tune search over the config's `tune.space`: one training job per trial, ASHA on top.

Each trial is a Tune function trainable that rewrites the searched fields of the experiment
config and calls the training driver (`pipeline.train.driver.fit`), the same code path as
`jobs/train.py`; the TorchTrainer it builds reports every epoch to Tune through
`TuneReportCallback`, which is what ASHA sees. (`Tuner(TorchTrainer(...))` does not work in
Ray 2.60; this function form is the supported one.)

A search has a name: Tune keeps its state in `<tune.storage_path>/<name>/`, MLflow holds a
parent run of that name with one child run per trial. Running the same name again restores
the Tune experiment: finished trials are kept, unfinished ones continue from their latest
training checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from pipeline.config.schema import ExperimentConfig, config_to_dict, flatten_config
from pipeline.config.search import LogUniform, TuneSection, validate_tune_section
from pipeline.config.typed import ConfigError
from pipeline.console.logs import quiet_this_process, verbose
from pipeline.data.training_data import TrainingData, load_training_data
from pipeline.storage import apcnet_home, join, resolve
from pipeline.tracking.runs import RunTracker, resolve_tracking
from pipeline.tracking.tags import KIND_SEARCH, KIND_TAG, KIND_TRIAL, TRIAL_ID_TAG
from pipeline.train.connection import connect
from pipeline.tune.space import apply_trial_parameters, searched_values
from pipeline.tune.trials import (
    UNFINISHED,
    TrackingTarget,
    TrialEventLines,
    TrialRow,
    TrialStatusCallback,
    best_row,
    classify_trial,
    epochs_of,
    format_trials_table,
    record_search_result,
    trial_run_name,
)

# Tune's own time axis: one reported result per training epoch.
TIME_ATTRIBUTE = "training_iteration"


@dataclass(frozen=True)
class SearchOutcome:
    """What a search produced.

    trials: every trial of the search so far (resumed ones included), in trial order.
    interrupted: the search stopped before all trials ended; run the same name to resume.
    """

    name: str
    experiment_path: str
    parent_run_id: str
    trials: list[TrialRow]
    best: TrialRow | None
    interrupted: bool
    resumed: bool
    wall_time_s: float
    table: str


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled parameters (picklable).

    `data` is the data set, loaded and hashed once for the whole search (trials search no
    field that changes it)."""

    search_name: str
    target: TrackingTarget
    parent_run_id: str
    data: TrainingData


def tune_section_of(config: ExperimentConfig) -> TuneSection:
    """The config's `tune` section (defaults where the config tree has none)."""
    return getattr(config, "tune", None) or TuneSection()


def build_param_space(tune_section: TuneSection) -> dict[str, Any]:
    """The Ray Tune param space: grid_search lists for grid, choice/loguniform otherwise."""
    space: dict[str, Any] = {}
    for key, values in searched_values(tune_section.space).items():
        if tune_section.search == "grid":
            assert not isinstance(values, LogUniform)  # refused by validate_tune_section
            space[key] = tune.grid_search(values)
        elif isinstance(values, LogUniform):
            space[key] = tune.loguniform(values.low, values.high)
        else:
            space[key] = tune.choice(values)
    return space


def count_trials(tune_section: TuneSection) -> int:
    """How many trials the search runs in all: grid size x num_samples, or num_samples."""
    if tune_section.search != "grid":
        return tune_section.num_samples
    size = 1
    for values in searched_values(tune_section.space).values():
        size *= len(values)  # type: ignore[arg-type]
    return size * tune_section.num_samples


def build_search_algorithm(tune_section: TuneSection, search_seed: int = 0) -> Searcher | Any:
    """Grid and random search: Tune's variant generator; Optuna: TPE seeded for repeatability."""
    if tune_section.search == "optuna":
        import optuna

        return OptunaSearch(
            metric=tune_section.metric,
            mode=tune_section.mode,
            sampler=optuna.samplers.TPESampler(seed=search_seed),
        )
    # A variant generator is not a Searcher, so Tune's max_concurrent_trials does not reach
    # it: the limit must be given here, or every trial would be started at once.
    return BasicVariantGenerator(
        max_concurrent=tune_section.max_concurrent_trials, random_state=search_seed
    )


def build_scheduler(tune_section: TuneSection, planned_epochs: int) -> TrialScheduler:
    """ASHA over epochs up to the training length, or plain FIFO when ASHA is off."""
    if not tune_section.asha.enabled:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTRIBUTE,
        max_t=planned_epochs,
        grace_period=min(tune_section.asha.grace_period, planned_epochs),
        reduction_factor=tune_section.asha.reduction_factor,
    )


def validate_search_config(config: ExperimentConfig) -> None:
    """The training config must report the metric every epoch for ASHA to compare trials."""
    tune_section = tune_section_of(config)
    validate_tune_section(tune_section)
    if config.optimization.epochs is None:
        raise ConfigError(
            "a search counts trial progress in epochs: set optimization.epochs (and "
            "optimization.iterations=null)"
        )
    if tune_section.asha.enabled and config.evaluation.every_epochs != 1:
        raise ConfigError(
            f"ASHA compares {tune_section.metric} after every epoch, but "
            f"evaluation.every_epochs={config.evaluation.every_epochs}; set "
            "evaluation.every_epochs=1 or tune.asha.enabled=false"
        )
    if config.scaling.elastic:
        raise ConfigError(
            f"scaling.num_workers={config.scaling.workers_text} is an elastic group, which a "
            "search does not run (its trials must compare at one size, and only a job's driver "
            "can bound an elastic wait below the minimum); give the trials a fixed number"
        )
    # Fail on the driver, before any trial starts, if a searched field does not exist.
    for parameters in _one_value_per_dimension(tune_section):
        apply_trial_parameters(config, parameters)


def with_num_samples(config: ExperimentConfig, num_samples: int | None) -> ExperimentConfig:
    """`config` with `tune.num_samples` replaced (the `--num-samples` option), if given."""
    if num_samples is None:
        return config
    tune_section = dataclasses.replace(tune_section_of(config), num_samples=num_samples)
    return dataclasses.replace(config, tune=tune_section)


def run_search(
    config: ExperimentConfig,
    name: str,
    *,
    num_samples: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> SearchOutcome:
    """Run (or resume) the search `name` described by `config.tune`; returns its outcome.

    num_samples: overrides `tune.num_samples`; the config is validated as overridden, before
    MLflow or Ray is touched (ConfigError).
    extra_callbacks: Tune callbacks run on the driver besides the project's own (tests install
    fault injection this way). Tune stores callbacks with the experiment's state: a resumed
    search keeps the ones it started with and ignores these.

    Needs Ray: joins the job's cluster (`ray job submit`, RAY_ADDRESS) or starts a local
    instance. Prints a line per trial event (Tune's own status tables with --verbose,
    `pipeline.console.logs`); the trials table is in the outcome and on the parent MLflow run.
    """
    started = time.perf_counter()
    config = with_num_samples(config, num_samples)
    validate_search_config(config)
    quiet_this_process()
    tune_section = tune_section_of(config)
    planned_epochs = int(config.optimization.epochs or 0)
    tracking_uri, experiment = resolve_tracking(
        config.tracking.tracking_uri, config.tracking.experiment_name
    )
    target = TrackingTarget(tracking_uri, experiment)
    # Trials and their training jobs must write to the store the driver resolved.
    config = dataclasses.replace(
        config,
        tracking=dataclasses.replace(
            config.tracking, tracking_uri=tracking_uri, experiment_name=experiment
        ),
    )
    # A local folder or an object store (s3://...), which Tune reads and writes itself.
    storage_path = resolve(tune_section.storage_path or apcnet_home() / "tune").uri
    experiment_path = join(storage_path, name)

    parent = RunTracker.open(
        name,
        tracking_uri=tracking_uri,
        experiment=experiment,
        tags={KIND_TAG: KIND_SEARCH},
        description=f"Ray Tune search {name}: {tune_section.search}, ASHA "
        f"{'on' if tune_section.asha.enabled else 'off'}",
    )
    parent.log_params({f"tune.{k}": v for k, v in flatten_config(tune_section).items()})
    context = TrialContext(name, target, parent.run_id, load_training_data(config.data))
    trainable = _trainable(config, context, tune_section)

    connect()  # the job's cluster under `ray job submit` or RAY_ADDRESS, else a local instance
    resumed = tune.Tuner.can_restore(experiment_path)
    if resumed:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_errored=True)
    else:
        search_algorithm = build_search_algorithm(tune_section)
        tuner = tune.Tuner(
            trainable,
            param_space=build_param_space(tune_section),
            tune_config=tune.TuneConfig(
                metric=tune_section.metric,
                mode=tune_section.mode,
                search_alg=search_algorithm,
                scheduler=build_scheduler(tune_section, planned_epochs),
                num_samples=tune_section.num_samples,
                # Tune limits a Searcher only (and warns that it ignores the limit for the
                # variant generator, which build_search_algorithm gives it directly).
                max_concurrent_trials=(
                    tune_section.max_concurrent_trials
                    if isinstance(search_algorithm, Searcher)
                    else None
                ),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                callbacks=[
                    TrialStatusCallback(name, target, parent.run_id, planned_epochs),
                    *extra_callbacks,
                    *([] if verbose() else [TrialEventLines(tune_section, planned_epochs)]),
                ],
                verbose=1 if verbose() else 0,  # Tune's status tables only with --verbose
            ),
        )
    results = tuner.fit()

    rows = [
        _row_of(result, name, tune_section.metric, tune_section.mode, planned_epochs)
        for result in results
    ]
    rows.sort(key=lambda row: row.trial_id)
    interrupted = any(row.status == UNFINISHED for row in rows) or len(rows) < count_trials(
        tune_section
    )
    best_parameters = _best_parameters(rows, tune_section.mode)
    best_config = (
        config_to_dict(apply_trial_parameters(config, best_parameters))
        if best_parameters is not None
        else None
    )
    best = record_search_result(
        parent, rows, metric=tune_section.metric, mode=tune_section.mode, best_config=best_config
    )
    parent.set_terminated("KILLED" if interrupted else "FINISHED")
    return SearchOutcome(
        name=name,
        experiment_path=experiment_path,
        parent_run_id=parent.run_id,
        trials=rows,
        best=best,
        interrupted=interrupted,
        resumed=resumed,
        wall_time_s=time.perf_counter() - started,
        table=format_trials_table(rows, tune_section.metric, tune_section.mode),
    )


def run_trial(
    parameters: dict[str, Any], *, base_config: ExperimentConfig, context: TrialContext
) -> None:
    """One Tune trial: the training job on the base config with this trial's parameters."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.driver import RunReporting, RunRequest, fit
    from pipeline.train.run_folder import storage_root

    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(context.search_name, trial_id)
    config = apply_trial_parameters(base_config, parameters)
    # Open the child run first, so a trial that fails before training still shows up
    # under the search with its parameters.
    tracker = RunTracker.open(
        run_name,
        tracking_uri=context.target.tracking_uri,
        experiment=context.target.experiment,
        parent_run_id=context.parent_run_id,
        tags={TRIAL_ID_TAG: trial_id, KIND_TAG: KIND_TRIAL},
    )
    tracker.log_params({f"trial.{key}": value for key, value in parameters.items()})
    fit(
        RunRequest(config, run_name, context.data, storage_root(config)),
        RunReporting(
            console="off",  # the search prints the trial's events instead
            callbacks=(TuneReportCallback(),),
            mlflow_parent_run_id=context.parent_run_id,
            cluster_events=lambda line: print(f"trial {trial_id}: {line}", flush=True),
        ),
    )


def _trainable(config: ExperimentConfig, context: TrialContext, tune_section: TuneSection) -> Any:
    with_config = tune.with_parameters(run_trial, base_config=config, context=context)
    return tune.with_resources(with_config, dict(tune_section.trial_driver_resources))


def _row_of(result: Any, search_name: str, metric: str, mode: str, planned_epochs: int) -> TrialRow:
    metrics = result.metrics or {}
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    history = result.metrics_dataframe
    values: list[float] = []
    if history is not None and metric in history:
        values = [float(value) for value in history[metric] if not math.isnan(float(value))]
    best = (max(values) if mode == "max" else min(values)) if values else math.nan
    # A trial that reported its last planned epoch has finished even when its final "done"
    # record is missing: a search interrupted as that trial ended can save it without one.
    finished = (
        bool(metrics.get("done"))
        or result.error is not None
        or epochs_of(metrics) >= planned_epochs
    )
    status = classify_trial(
        epochs_of(metrics), planned_epochs, errored=result.error is not None, finished=finished
    )
    parameters = {key: value for key, value in (result.config or {}).items()}
    return TrialRow(
        trial_id=trial_id,
        run_name=trial_run_name(search_name, trial_id),
        parameters=parameters,
        epochs_run=epochs_of(metrics),
        best_metric=best,
        status=status,
    )


def _best_parameters(rows: list[TrialRow], mode: str) -> dict[str, Any] | None:
    best = best_row(rows, mode)
    return None if best is None else best.parameters


def _one_value_per_dimension(tune_section: TuneSection) -> list[dict[str, Any]]:
    parameters: dict[str, Any] = {}
    for key, values in searched_values(tune_section.space).items():
        parameters[key] = values.low if isinstance(values, LogUniform) else values[0]
    return [parameters]
