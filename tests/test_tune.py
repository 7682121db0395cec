"""Specification of the Ray Tune search: its space in the config, trials as MLflow child
runs, ASHA's early stop marked on the stopped trial, and resuming an interrupted search."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from helpers.faults.tune import InterruptAfterTrials
from mlflow import MlflowClient
from mlflow.entities import Run
from ray import tune

from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.config.search import (
    LogUniform,
    SearchSpaceSection,
    TuneSection,
    validate_tune_section,
)
from pipeline.config.typed import ConfigError
from pipeline.tracking.runs import child_runs
from pipeline.tracking.tags import (
    BEST_PARAMETER_TAG_PREFIX,
    BEST_TRIAL_TAG,
    TRIAL_ID_TAG,
    TRIAL_STATUS_TAG,
)
from pipeline.tune.search import (
    build_param_space,
    build_search_algorithm,
    count_trials,
    run_search,
    validate_search_config,
)
from pipeline.tune.space import (
    apply_trial_parameters,
    parse_pool_scales_label,
    pool_scales_label,
)
from pipeline.tune.trials import (
    COMPLETED,
    ERRORED,
    STOPPED_EARLY,
    UNFINISHED,
    TrialRow,
    best_row,
    classify_trial,
    format_trials_table,
    result_line,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------
# The search space (pure)


def test_the_search_space_is_read_from_the_config_file_and_overrides() -> None:
    config = load_config(
        REPO_ROOT / "configs" / "tune_synthetic.yaml",
        ["tune.space.pool_scales=[[], [1, 2, 3, 6]]", "tune.space.gla=[false]"],
    )
    assert config.tune.space.pool_scales == ((), (1, 2, 3, 6))
    assert config.tune.space.gla == (False,)
    assert config.tune.space.learning_rate == LogUniform(low=0.003, high=0.05)


def test_pool_scale_labels_round_trip_including_the_no_pyramid_baseline() -> None:
    for scales in [(), (1,), (1, 2, 3, 6)]:
        assert parse_pool_scales_label(pool_scales_label(scales)) == scales
    assert pool_scales_label(()) == "none"


def test_grid_search_enumerates_every_listed_value() -> None:
    section = TuneSection(
        search="grid",
        num_samples=2,
        space=SearchSpaceSection(pool_scales=((1,), (1, 2, 3, 6)), learning_rate=(0.1, 0.01)),
    )
    space = build_param_space(section)
    assert space["pool_scales"] == tune.grid_search(["1", "1,2,3,6"])
    assert space["lr"] == tune.grid_search([0.1, 0.01])
    assert "gla" not in space  # empty dimensions keep the base config's value
    assert count_trials(section) == 2 * 2 * 2


def test_random_search_samples_the_learning_rate_log_uniformly() -> None:
    section = TuneSection(search="random", space=SearchSpaceSection(gla=(True, False)))
    space = build_param_space(section)
    rate = space["lr"]
    assert isinstance(rate, tune.search.sample.Float)
    assert (rate.lower, rate.upper) == (1e-3, 1e-1)
    assert isinstance(rate.get_sampler(), tune.search.sample.LogUniform)
    assert space["gla"].categories == [True, False]


def test_grid_and_random_search_start_at_most_max_concurrent_trials() -> None:
    # Tune's own max_concurrent_trials does not reach a variant generator passed in.
    section = TuneSection(search="grid", max_concurrent_trials=3)
    assert build_search_algorithm(section).max_concurrent == 3


def test_grid_search_refuses_a_continuous_range_and_says_what_to_do() -> None:
    section = TuneSection(search="grid", space=SearchSpaceSection(learning_rate=LogUniform()))
    with pytest.raises(ConfigError, match=r"tune.space.learning_rate.*list of values"):
        validate_tune_section(section)


def test_a_pool_scale_set_with_repeats_is_refused() -> None:
    section = TuneSection(space=SearchSpaceSection(pool_scales=((1, 1),)))
    with pytest.raises(ConfigError, match=r"tune\.space\.pool_scales"):
        validate_tune_section(section)


def test_trial_parameters_set_the_matching_config_fields() -> None:
    config = ExperimentConfig()
    trial = apply_trial_parameters(
        config,
        {
            "pool_scales": "none",
            "lr": 0.003,
            "gla": False,
            "weight_decay": 5e-4,
            "seed": 7,
            "other": 1,
        },
    )
    assert trial.model.pool_scales == ()
    assert trial.model.gla is False
    assert trial.optimization.lr == 0.003
    assert trial.optimization.weight_decay == 5e-4
    assert trial.data.seed == 7
    # Nothing else changes.
    assert dataclasses.replace(trial.data, seed=config.data.seed) == config.data
    assert trial.evaluation == config.evaluation


def test_the_seed_dimension_repeats_a_setting_with_different_data_seeds() -> None:
    config = load_config(
        REPO_ROOT / "configs" / "tune_synthetic.yaml",
        ["tune.search=grid", "tune.space.learning_rate=[0.01]", "tune.space.seed=[0, 1, 2]"],
    )
    validate_search_config(config)  # the seed field exists in the config tree
    assert build_param_space(config.tune)["seed"] == tune.grid_search([0, 1, 2])
    seeds = [apply_trial_parameters(config, {"seed": seed}).data.seed for seed in (0, 1, 2)]
    assert seeds == [0, 1, 2]


def test_asha_needs_validation_after_every_epoch() -> None:
    config = load_config(REPO_ROOT / "configs" / "tune_synthetic.yaml")
    config = dataclasses.replace(
        config, evaluation=dataclasses.replace(config.evaluation, every_epochs=2)
    )
    with pytest.raises(ConfigError, match=r"evaluation\.every_epochs=1"):
        validate_search_config(config)


# ------------------------------------------------------------------------------------------
# Trial statuses and the table (pure)


def test_a_trial_that_ended_before_its_last_epoch_was_stopped_early() -> None:
    assert classify_trial(1, 3, errored=False, finished=True) == STOPPED_EARLY
    assert classify_trial(3, 3, errored=False, finished=True) == COMPLETED
    assert classify_trial(2, 3, errored=True, finished=True) == ERRORED
    assert classify_trial(2, 3, errored=False, finished=False) == UNFINISHED


def test_an_epoch_result_line_names_the_trial_the_epoch_and_the_values_it_has() -> None:
    result = {"epoch": 2, "train_loss": 1.23456, "val_miou": 0.4321, "lr": 0.001}
    assert result_line("t1", result, "val_miou", 3) == (
        "trial t1 epoch 2/3: val_miou=0.4321 train_loss=1.235"
    )
    without_validation = {"epoch": 1, "train_loss": 2.0, "val_miou": float("nan")}
    assert result_line("t1", without_validation, "train_loss", 3) == (
        "trial t1 epoch 1/3: train_loss=2"
    )


SCORED_ROWS = [
    TrialRow("a", "s-a", {"lr": 0.1}, 3, 0.2, COMPLETED),
    TrialRow("b", "s-b", {"lr": 0.01}, 1, float("nan"), ERRORED),
    TrialRow("c", "s-c", {"lr": 0.02}, 3, 0.5, COMPLETED),
]


def test_the_best_trial_ignores_trials_without_a_value() -> None:
    assert best_row(SCORED_ROWS, "max").trial_id == "c"
    assert best_row(SCORED_ROWS, "min").trial_id == "a"


def test_the_trials_table_lists_trials_best_first_and_those_without_a_value_last() -> None:
    header, _, *lines = format_trials_table(SCORED_ROWS, "val_miou").splitlines()
    assert header.split() == ["trial", "lr", "epochs", "best_val_miou", "status"]
    assert [line.split()[0] for line in lines] == ["c", "a", "b"]


def test_the_trials_table_has_a_column_for_every_searched_dimension() -> None:
    rows = [
        TrialRow("a", "s-a", {"lr": 0.01, "weight_decay": 1e-4, "seed": 0}, 3, 0.2, COMPLETED),
        TrialRow("b", "s-b", {"lr": 0.01, "weight_decay": 5e-4, "seed": 1}, 3, 0.3, COMPLETED),
    ]
    header, _, best, _ = format_trials_table(rows, "val_miou").splitlines()
    assert {"weight_decay", "seed"} <= set(header.split())
    assert best.split()[:4] == ["b", "0.0100", "0.0005", "1"]


def test_a_num_samples_override_below_one_is_refused_before_ray_or_mlflow_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ray_must_not_start(**_: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr("pipeline.tune.search.connect", ray_must_not_start)
    config = tiny_search_config(tmp_path, [0.01])
    with pytest.raises(ConfigError, match=r"tune\.num_samples must be at least 1, got 0"):
        run_search(config, "no-samples", num_samples=0)
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------------------
# Real searches: Ray Tune on the shared local Ray instance, MLflow in a SQLite store

USELESS_LR = 1e-9  # never improves the model, so ASHA must stop it at its first rung
# AdamW's first steps move every weight by about the learning rate, so these rates lower the
# training loss well within the first tiny epoch, far below the untrained loss of USELESS_LR.
GOOD_RATES = [3e-3]
EPOCHS = 3


def tiny_search_config(
    tmp_path: Path, learning_rates: list[float], *extra: str
) -> ExperimentConfig:
    """A grid over learning rates on a tiny synthetic set and a tiny resnet18 APCNet."""
    rates = ", ".join(f"{rate:.6e}" for rate in learning_rates)  # YAML 1.1 needs the dot
    return load_config(
        REPO_ROOT / "configs" / "tune_synthetic.yaml",
        [
            "data.synthetic.num_train=32",
            "data.synthetic.num_val=8",
            "data.synthetic.size=32",
            "data.augmentation.crop_size=[32, 32]",
            "model.channels=16",
            "optimization.batch_size=4",
            f"optimization.epochs={EPOCHS}",
            "scaling.num_workers=1",
            f"checkpointing.storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.experiment_name=tune-spec",
            "tune.search=grid",
            "tune.num_samples=1",
            "tune.max_concurrent_trials=1",
            "tune.asha.grace_period=1",
            "tune.asha.reduction_factor=2",
            "tune.space.pool_scales=[[1, 2]]",
            "tune.space.gla=[]",
            f"tune.space.learning_rate=[{rates}]",
            f"tune.storage_path={tmp_path / 'tune'}",
            *extra,
        ],
    )


def child_runs_by_lr(config: ExperimentConfig, parent_run_id: str) -> dict[float, Run]:
    runs = child_runs(parent_run_id, tracking_uri=config.tracking.tracking_uri)
    return {float(run.data.params["optimization.lr"]): run for run in runs}


@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
def test_a_grid_search_logs_every_trial_stops_the_useless_one_and_records_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ordered best-first with one trial at a time: the useless rate comes last, when every
    # rung already holds better values. ASHA ranks by training loss here: after one tiny
    # epoch val mIoU barely separates the trials, while the loss of a rate of 1e-9 stays at
    # its initial value and every real rate lowers it, so the decision is deterministic.
    config = tiny_search_config(
        tmp_path,
        [*GOOD_RATES, USELESS_LR],
        "optimization.optimizer=adamw",
        "tune.metric=train_loss",
        "tune.mode=min",
    )
    outcome = run_search(config, "grid-spec")

    assert not outcome.interrupted
    assert len(outcome.trials) == len(GOOD_RATES) + 1
    by_lr = {row.parameters["lr"]: row for row in outcome.trials}
    best_rate = GOOD_RATES[0]
    assert by_lr[best_rate].status == COMPLETED  # the first trial has no rival at its rungs
    assert by_lr[best_rate].epochs_run == EPOCHS
    assert by_lr[USELESS_LR].status == STOPPED_EARLY
    assert by_lr[USELESS_LR].epochs_run < EPOCHS

    runs = child_runs_by_lr(config, outcome.parent_run_id)
    assert sorted(runs) == sorted([*GOOD_RATES, USELESS_LR])
    client = MlflowClient(config.tracking.tracking_uri)
    for lr, run in runs.items():
        row = by_lr[lr]
        assert run.data.params["model.pool_scales"] == "[1, 2]"
        assert run.data.params["trial.lr"] == str(lr)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
        assert sorted(steps) == list(range(1, row.epochs_run + 1))
        assert run.data.tags[TRIAL_STATUS_TAG] == row.status
    stopped = runs[USELESS_LR]
    assert stopped.data.tags[TRIAL_STATUS_TAG] == STOPPED_EARLY
    assert stopped.info.status == "KILLED"
    assert runs[best_rate].info.status == "FINISHED"

    # The console: each trial's start, one line per epoch it ran, and how it ended, once each.
    console = capsys.readouterr().out.splitlines()
    for row in outcome.trials:
        mine = [line for line in console if line.startswith(f"trial {row.trial_id} ")]
        ending = "completed" if row.status == COMPLETED else "stopped early"
        assert [line.split(":")[0] for line in mine] == [
            f"trial {row.trial_id} started",
            *(
                f"trial {row.trial_id} epoch {epoch}/{EPOCHS}"
                for epoch in range(1, row.epochs_run + 1)
            ),
            f"trial {row.trial_id} {ending} after {row.epochs_run} epochs",
        ], "\n".join(console)

    parent = client.get_run(outcome.parent_run_id)
    assert outcome.best is not None and outcome.best.parameters["lr"] != USELESS_LR
    assert parent.data.tags[BEST_TRIAL_TAG] == outcome.best.trial_id
    assert parent.data.tags[f"{BEST_PARAMETER_TAG_PREFIX}lr"] == str(outcome.best.parameters["lr"])
    assert parent.data.metrics["best_train_loss"] == pytest.approx(outcome.best.best_metric)
    artifacts = {item.path for item in client.list_artifacts(outcome.parent_run_id)}
    assert {"trials.csv", "trials.txt", "best_config.yaml"} <= artifacts
    assert parent.info.status == "FINISHED"


@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
def test_an_interrupted_search_resumes_without_rerunning_finished_trials(
    tmp_path: Path,
) -> None:
    config = tiny_search_config(
        tmp_path,
        [0.05, 0.02],
        "tune.asha.enabled=false",
        "optimization.epochs=1",
    )
    first = run_search(config, "resume-spec", extra_callbacks=[InterruptAfterTrials(1)])
    assert first.interrupted
    finished_first = [row for row in first.trials if row.status == COMPLETED]
    assert len(finished_first) == 1
    client = MlflowClient(config.tracking.tracking_uri)
    assert client.get_run(first.parent_run_id).info.status == "KILLED"

    resumed_at_ms = time.time() * 1000
    second = run_search(config, "resume-spec")
    assert second.resumed and not second.interrupted
    assert second.parent_run_id == first.parent_run_id
    assert [row.status for row in second.trials] == [COMPLETED, COMPLETED]

    runs = child_runs(second.parent_run_id, tracking_uri=config.tracking.tracking_uri)
    assert len(runs) == 2  # one child run per trial, none duplicated by the resume
    earlier = next(run for run in runs if run.data.tags[TRIAL_ID_TAG] == finished_first[0].trial_id)
    history = client.get_metric_history(earlier.info.run_id, "val_miou")
    assert [m.step for m in history] == [1]
    assert all(m.timestamp < resumed_at_ms for m in history)  # not trained again
