"""Specification of the Ray Tune search: its space in the config, trials as MLflow child
runs, ASHA's early stop marked on the stopped trial, and resuming an interrupted search."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ray import tune

from pipeline.config import ExperimentConfig, load_config
from pipeline.search_space import (
    LogUniform,
    SearchSpaceSection,
    TuneSection,
    apply_trial_parameters,
    parse_pool_scales_label,
    pool_scales_label,
    validate_tune_section,
)
from pipeline.tune import build_param_space, count_trials, validate_search_config
from pipeline.tune_tracking import (
    COMPLETED,
    ERRORED,
    STOPPED_EARLY,
    UNFINISHED,
    TrialRow,
    best_row,
    classify_trial,
    format_trials_table,
)
from pipeline.typed_config import ConfigError

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
        {"pool_scales": "none", "lr": 0.003, "gla": False, "weight_decay": 5e-4, "other": 1},
    )
    assert trial.model.pool_scales == ()
    assert trial.model.gla is False
    assert trial.optimization.lr == 0.003
    assert trial.optimization.weight_decay == 5e-4
    assert trial.data == config.data  # nothing else changes


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


def test_the_best_trial_ignores_trials_without_a_value() -> None:
    rows = [
        TrialRow("a", "s-a", {"lr": 0.1}, 3, 0.2, COMPLETED),
        TrialRow("b", "s-b", {"lr": 0.01}, 1, float("nan"), ERRORED),
        TrialRow("c", "s-c", {"lr": 0.02}, 3, 0.5, COMPLETED),
    ]
    assert best_row(rows, "max").trial_id == "c"
    assert best_row(rows, "min").trial_id == "a"
    lines = format_trials_table(rows, "val_miou").splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["c", "a", "b"]
    assert lines[0].split() == [
        "trial",
        "scales",
        "lr",
        "gla",
        "epochs",
        "best",
        "val_miou",
        "status",
    ]
