"""The `tune` section of the experiment config: what a search varies and how it runs.

A search space names the knobs the paper ablates (pyramid scales, global guidance) plus the
usual training ones (learning rate, weight decay, seed). Each dimension is a tuple of values;
an empty tuple leaves the base config's value alone. The learning rate may instead be a
log-uniform range, which random and Optuna search sample and grid search refuses.
`pipeline.tune.space` turns these sections into Ray Tune's param space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.typed import ConfigError


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
        TorchTrainer; its workers reserve `scaling.resources_per_worker` each. On a cluster
        `{CPU: 0, apcnet_head_node: 0.01}` keeps the drivers on the head, where a lost worker
        node cannot take them.
    storage_path: Tune's experiment folders `<storage_path>/<search name>/`, a local folder or
        s3:// / gs://; None means `<home>/tune`.
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
