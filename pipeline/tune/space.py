"""The `tune` section of the experiment config: what a search varies and how it runs.

A search space names the knobs the paper ablates (pyramid scales, global guidance) plus the
usual training ones (learning rate, weight decay, seed). Each dimension is a tuple of values;
an empty tuple leaves the base config's value alone. The learning rate may instead be a
log-uniform range, which random and Optuna search sample and grid search refuses.

Pure data and pure functions only (no Ray): `pipeline.tune.search` turns a `SearchSpaceSection`
into a Ray Tune param space and a trial's sampled parameters back into an `ExperimentConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config.typed import ConfigError

# The keys of a trial's parameter dict and the config fields they set. Keeping this one table
# is what makes a trial "exactly the training job": it only rewrites these fields.
POOL_SCALES = "pool_scales"
LEARNING_RATE = "lr"
GLOBAL_GUIDANCE = "gla"
WEIGHT_DECAY = "weight_decay"
SEED = "seed"
PARAMETER_FIELDS: dict[str, tuple[str, str]] = {
    POOL_SCALES: ("model", "pool_scales"),
    LEARNING_RATE: ("optimization", "lr"),
    GLOBAL_GUIDANCE: ("model", "gla"),
    WEIGHT_DECAY: ("optimization", "weight_decay"),
    # data.seed orders and augments the samples (and seeds the model initialisation).
    SEED: ("data", "seed"),
}
NO_PYRAMID_LABEL = "none"


@dataclass(frozen=True)
class LogUniform:
    """A continuous range sampled uniformly in log space: YAML `{low: 0.001, high: 0.1}`."""

    low: float = 1e-3
    high: float = 1e-1


@dataclass(frozen=True)
class SearchSpaceSection:
    """The values each trial parameter may take; an empty tuple means "not searched".

    pool_scales: pyramid scale sets, e.g. [[1], [1, 2, 3, 6]]; [] inside the list is the
        dilated-FCN baseline without any Adaptive Context Module.
    learning_rate: a list of values (grid, random, Optuna) or a LogUniform range (random,
        Optuna only).
    gla: global-guided local affinity on/off, e.g. [true, false].
    weight_decay: a list of values.
    seed: a list of `data.seed` values (shuffling, augmentation, initialisation): repeats of
        the same setting, e.g. [0, 1, 2] for a mean and spread.
    """

    pool_scales: tuple[tuple[int, ...], ...] = ((1,), (1, 2), (1, 2, 3), (1, 2, 3, 6))
    learning_rate: tuple[float, ...] | LogUniform = field(default_factory=LogUniform)
    gla: tuple[bool, ...] = ()
    weight_decay: tuple[float, ...] = ()
    seed: tuple[int, ...] = ()


@dataclass(frozen=True)
class AshaSection:
    """Asynchronous successive halving on `tune.metric`, counted in reported epochs.

    A trial reaching `grace_period` epochs is compared with the others at the same rung and
    stopped unless it is in the best 1/`reduction_factor`. The horizon is the training length
    (`optimization.epochs`).
    """

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class TuneSection:
    """How a search runs (see `python jobs/tune.py --help`).

    search: "grid" runs every combination `num_samples` times; "random" and "optuna" run
        `num_samples` trials sampled from the space (Optuna learns from finished trials).
    max_concurrent_trials: 1 fits a 2-core machine; on a cluster raise it as far as the
        resources of one trial (driver + `scaling` workers) allow.
    trial_driver_resources: reserved for the Tune function that drives a trial's
        TorchTrainer; its workers reserve `scaling.resources_per_worker` each.
    storage_path: Tune's experiment folders `<storage_path>/<search name>/`; None means
        `<home>/tune`.
    interrupt_after_trials: test hook only: the search driver interrupts itself (like Ctrl-C)
        once this many trials of the search have finished, to test resuming.
    """

    search: Literal["grid", "random", "optuna"] = "random"
    num_samples: int = 4
    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = 1
    trial_driver_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 0.5})
    asha: AshaSection = field(default_factory=AshaSection)
    space: SearchSpaceSection = field(default_factory=SearchSpaceSection)
    storage_path: str | None = None
    interrupt_after_trials: int | None = None


def pool_scales_label(scales: tuple[int, ...]) -> str:
    """A search-space value for a scale set: (1, 2, 3, 6) -> "1,2,3,6", () -> "none".

    Strings, because Optuna's categorical choices must be scalars.
    """
    return ",".join(str(scale) for scale in scales) if scales else NO_PYRAMID_LABEL


def parse_pool_scales_label(label: str) -> tuple[int, ...]:
    """The inverse of `pool_scales_label`."""
    if label == NO_PYRAMID_LABEL:
        return ()
    try:
        return tuple(int(part) for part in label.split(","))
    except ValueError as error:
        raise ConfigError(
            f"pool scale label {label!r} is not a comma-separated list of integers or "
            f"{NO_PYRAMID_LABEL!r}"
        ) from error


def validate_tune_section(tune: TuneSection) -> None:
    """Checks beyond types; raises ConfigError naming the `tune.*` key at fault."""
    space = tune.space
    if tune.num_samples < 1:
        raise ConfigError(f"tune.num_samples must be at least 1, got {tune.num_samples}")
    if tune.max_concurrent_trials < 1:
        raise ConfigError(
            f"tune.max_concurrent_trials must be at least 1, got {tune.max_concurrent_trials}"
        )
    if tune.asha.grace_period < 1 or tune.asha.reduction_factor < 2:
        raise ConfigError(
            "tune.asha needs grace_period >= 1 and reduction_factor >= 2, got "
            f"grace_period={tune.asha.grace_period}, "
            f"reduction_factor={tune.asha.reduction_factor}"
        )
    for scales in space.pool_scales:
        if any(scale < 1 for scale in scales) or len(set(scales)) != len(scales):
            raise ConfigError(
                f"tune.space.pool_scales entry {list(scales)} must hold distinct positive "
                "integers (or be [] for the no-pyramid baseline)"
            )
    rate = space.learning_rate
    if isinstance(rate, LogUniform):
        if not 0 < rate.low < rate.high:
            raise ConfigError(
                "tune.space.learning_rate range needs 0 < low < high, got "
                f"low={rate.low}, high={rate.high}"
            )
        if tune.search == "grid":
            raise ConfigError(
                "tune.search=grid cannot enumerate the log-uniform tune.space.learning_rate "
                f"range {rate}; give a list of values instead, e.g. "
                "--set 'tune.space.learning_rate=[0.01,0.003]', or use tune.search=random"
            )
    elif any(value <= 0 for value in rate):
        raise ConfigError(f"tune.space.learning_rate values must be positive, got {list(rate)}")


def searched_values(space: SearchSpaceSection) -> dict[str, list[Any] | LogUniform]:
    """The searched dimensions only, keyed like a trial's parameters, in a fixed order.

    Scale sets become labels ("1,2,3,6"); dimensions left empty are absent.
    """
    dimensions: dict[str, list[Any] | LogUniform] = {}
    if space.pool_scales:
        dimensions[POOL_SCALES] = [pool_scales_label(scales) for scales in space.pool_scales]
    if isinstance(space.learning_rate, LogUniform) or space.learning_rate:
        rate = space.learning_rate
        dimensions[LEARNING_RATE] = rate if isinstance(rate, LogUniform) else list(rate)
    for key, values in (
        (GLOBAL_GUIDANCE, space.gla),
        (WEIGHT_DECAY, space.weight_decay),
        (SEED, space.seed),
    ):
        if values:
            dimensions[key] = list(values)
    return dimensions


def apply_trial_parameters(config: Any, parameters: dict[str, Any]) -> Any:
    """The experiment config of one trial: `config` with the trial's parameters set.

    `config` is an `ExperimentConfig`; `parameters` holds keys of `PARAMETER_FIELDS` (pool
    scales as labels). Unknown keys are ignored, because Tune may add its own.
    """
    updated = config
    for key, (section_name, field_name) in PARAMETER_FIELDS.items():
        if key not in parameters:
            continue
        value = parameters[key]
        if key == POOL_SCALES:
            value = parse_pool_scales_label(value)
        elif key in (LEARNING_RATE, WEIGHT_DECAY):
            value = float(value)
        elif key == SEED:
            value = int(value)
        elif key == GLOBAL_GUIDANCE:
            value = bool(value)
        section = getattr(updated, section_name)
        if not any(f.name == field_name for f in dataclasses.fields(section)):
            raise ConfigError(
                f"tune.space.{key} cannot be searched: the config has no {section_name}."
                f"{field_name}; remove it from tune.space"
            )
        updated = dataclasses.replace(
            updated, **{section_name: dataclasses.replace(section, **{field_name: value})}
        )
    return updated


def describe_parameters(parameters: dict[str, Any]) -> str:
    """A short human label of a trial, e.g. "pool_scales=1,2,3,6 lr=0.01"."""
    parts = []
    for key in PARAMETER_FIELDS:
        if key in parameters:
            value = parameters[key]
            parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
