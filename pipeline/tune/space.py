"""A search space's dimensions as trial parameters, and a trial's parameters as a config.

The `tune` config section (`pipeline.config.search`) says what is searched; pure functions
here (no Ray) name each searched dimension, and `pipeline.tune.search` turns them into a Ray
Tune param space and a trial's sampled parameters back into an `ExperimentConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.config.search import LogUniform, SearchSpaceSection
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
