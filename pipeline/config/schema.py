"""The experiment configuration: one typed dataclass tree, loaded from YAML plus overrides.

A config file holds any subset of the sections below; what it leaves out keeps the default.
Overrides use dotted keys (`--set optimization.lr=0.02`); each value is parsed as YAML and then
checked against the field's type, so `--set model.pool_scales=[1,2,3]` gives a tuple of ints and
`--set optimization.lr=fast` is an error naming the key, the expected type and the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config.augmentation import AugmentationConfig
from pipeline.config.batching import worker_counts_that_cannot_keep
from pipeline.config.ingest import IngestOptions
from pipeline.config.search import TuneSection
from pipeline.config.typed import (
    ConfigError,
    apply_override,
    build_dataclass,
    is_section,
    load_yaml,
    scalar_text,
    to_plain,
)

__all__ = [
    "AugmentationConfig",
    "ConfigError",
    "ExperimentConfig",
    "changed_keys",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "flatten_config",
    "load_config",
    "validate_config",
]


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The built-in synthetic data set, generated on first use when `data.path` is unset."""

    num_train: int = 64
    num_val: int = 16
    size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DataSection:
    """Where the shards are and how training samples are augmented.

    `path` is a shard folder or its manifest.json (local, NFS, s3://, gs://). When it is None
    the synthetic set described by `synthetic` is prepared under `<home>/data/` and used.
    `seed` makes shuffling, augmentation (per sample and epoch) and the model's initial weights
    reproducible. `ingest` tunes how Ray Data feeds the workers and its CPU budget beside them
    (`pipeline.config.ingest`).
    """

    path: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    ingest: IngestOptions = field(default_factory=IngestOptions)


@dataclass(frozen=True)
class ModelSection:
    """APCNet architecture, as `apcnet.APCNet` takes it.

    backbone: "resnet50_v1c", "resnet101_v1c" (reference layout), "resnet50", "resnet101"
        (torchvision layout) or "resnet18" (small, for CPU demos).
    channels: head width for a 2048-channel backbone; scaled down with narrower backbones.
    gla: global-guided local affinity on (the paper's GLA ablation turns it off).
    aux_loss_weight: deep-supervision weight; 0 drops the auxiliary head.
    pretrained_backbone: a local torchvision-layout state dict for the backbone, or None.
    """

    backbone: str = "resnet50_v1c"
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    channels: int = 512
    gla: bool = True
    fusion: bool = True
    aux_loss_weight: float = 0.4
    dropout: float = 0.1
    output_stride: int = 8
    pretrained_backbone: str | None = None


@dataclass(frozen=True)
class OptimizationSection:
    """Optimizer and training length.

    `batch_size` is the global batch over all workers; it must divide by `scaling.num_workers`.
    Exactly one of `epochs` and `iterations` is set.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 16
    epochs: int | None = 80
    iterations: int | None = None
    grad_clip_norm: float | None = None


@dataclass(frozen=True)
class ScheduleSection:
    """Poly learning rate per iteration: lr = (lr0 - min_lr) * (1 - it/total)^power + min_lr."""

    power: float = 0.9
    min_lr: float = 0.0
    warmup_iterations: int = 0


@dataclass(frozen=True)
class EvaluationSection:
    """Validation during training: every `every_epochs` epochs and after the last one."""

    every_epochs: int = 1
    batch_size: int = 1


@dataclass(frozen=True)
class ScalingSection:
    """Workers and devices for Ray Train.

    On a CPU-only laptop two workers at {"CPU": 0.5} leave room for Ray Data's preprocessing
    tasks; on a GPU cluster use whole CPUs plus `use_gpu: true`. "auto" switches a GPU-only
    feature on exactly when workers use GPUs. A custom node resource in `resources_per_worker`
    (e.g. {CPU: 1, apcnet_worker_node: 1}, each worker node offering 1) pins one worker per node.
    `max_failures` counts worker failures Ray Train recovers from (from the last checkpoint);
    `node_wait_s` bounds each wait for the resources to come back.

    `num_workers` [min, max] makes the group elastic (Ray Train's `(min, max)`): it starts once
    `min` workers can be placed, shrinks to the workers left when a node goes, and grows (up to
    `max`) when nodes join, checked every `resize_check_s`. Every resize restarts the group from
    the last checkpoint; the global batch stays `optimization.batch_size` through gradient
    accumulation (`pipeline.config.batching`).
    """

    num_workers: int | tuple[int, int] = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 0.5})
    # "none" rather than "off": YAML reads a bare off/on as a boolean.
    mixed_precision: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    sync_batchnorm: Literal["auto"] | bool = "auto"
    process_group_timeout_s: int = 300
    max_failures: int = 3
    # After workers fail (a node lost), how long to wait for nodes that can hold them again
    # (e.g. a replacement the autoscaler starts) before the run fails with a message.
    node_wait_s: float = 120.0
    # An elastic group's look for a different size, while it trains (Ray Train's
    # elastic_resize_monitor_interval_s).
    resize_check_s: float = 60.0

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def workers_text(self) -> str:
        """The config's own spelling: "2", or "[1, 2]" for an elastic group."""
        low, high = self.min_workers, self.max_workers
        return f"[{low}, {high}]" if self.elastic else str(low)


@dataclass(frozen=True)
class CheckpointingSection:
    """Where run folders go (`<storage_path>/<run name>/`) and how many best ones to keep.

    `storage_path` None means `<home>/runs`. The latest checkpoint is always kept besides the
    `num_to_keep` best by val_miou.
    """

    storage_path: str | None = None
    num_to_keep: int = 2


@dataclass(frozen=True)
class TrackingSection:
    """MLflow: None values fall back to MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME, then to a
    SQLite store under the home folder (see `pipeline.tracking.runs.resolve_tracking`)."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment_name: str | None = None
    # How long a training run keeps retrying a tracking server that stopped answering (e.g.
    # while it restarts) before it fails; its epochs' metrics are logged once it answers.
    outage_wait_s: float = 120.0
    # Register the finished run's best checkpoint as a new version of this MLflow model
    # (`jobs/train.py --register NAME` does the same); needs `enabled`.
    register_model: str | None = None
    # Every node running training workers logs its CPU, memory, disk, network and GPU use into
    # the run, every `node_metrics_interval_s` seconds, as system/node-<id>/<metric>
    # (`pipeline.tracking.node_metrics`; MLflow's system-metrics environment variables do not
    # apply to it). Needs `enabled`.
    node_metrics: bool = True
    node_metrics_interval_s: float = 10.0


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs, in one tree."""

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optimization: OptimizationSection = field(default_factory=OptimizationSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    checkpointing: CheckpointingSection = field(default_factory=CheckpointingSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    tune: TuneSection = field(default_factory=TuneSection)  # used by jobs/tune.py only


# --------------------------------------------------------------------------------------------
# Loading, overriding, checking


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), *, check_paths: bool = True
) -> ExperimentConfig:
    """Read a YAML config (None: the defaults), apply `key=value` overrides, type-check, validate.

    `check_paths=False` skips the existence check of `data.path` (for recipes written on one
    machine and run on another). Raises ConfigError naming the file, key or value at fault.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        config_file = Path(path)
        if not config_file.is_file():
            raise ConfigError(
                f"config file {config_file} does not exist; pass an existing YAML file"
            )
        loaded = load_yaml(config_file.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: the top level must be a mapping of sections")
        raw = loaded or {}
    for override in overrides:
        apply_override(raw, override, ExperimentConfig)
    config = config_from_dict(raw, source=source)
    validate_config(config, check_paths=check_paths)
    return config


def config_from_dict(raw: Mapping[str, Any], *, source: str = "<dict>") -> ExperimentConfig:
    """Build the tree from plain data (YAML or a checkpoint's stored config), checking types."""
    return build_dataclass(ExperimentConfig, raw, prefix="", source=source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML/JSON-safe data: nested dicts, lists for tuples."""
    return to_plain(config)


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML text, in field order (loads back to an equal config)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def changed_keys(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """The dotted keys of `new` whose values differ in `old`."""
    before, after = flatten_config(old), flatten_config(new)
    return [key for key in after if before.get(key) != after[key]]


def flatten_config(config: Any) -> dict[str, str]:
    """Dotted keys to string values, e.g. {"optimization.lr": "0.01"}, for MLflow parameters."""
    flat: dict[str, str] = {}

    def visit(value: Any, prefix: str) -> None:
        if is_section(value):
            for section_field in fields(value):
                name = section_field.name
                visit(getattr(value, name), f"{prefix}.{name}" if prefix else name)
        else:
            flat[prefix] = scalar_text(value)

    visit(config, "")
    return flat


def validate_config(config: ExperimentConfig, *, check_paths: bool = True) -> None:
    """Checks that go beyond types: one training length, a divisible batch, an existing data path."""
    optimization, scaling = config.optimization, config.scaling
    if (optimization.epochs is None) == (optimization.iterations is None):
        raise ConfigError(
            "set exactly one of optimization.epochs and optimization.iterations "
            f"(got epochs={optimization.epochs}, iterations={optimization.iterations}); "
            "set the other to null"
        )
    for key, value in (
        ("optimization.epochs", optimization.epochs),
        ("optimization.iterations", optimization.iterations),
        ("optimization.batch_size", optimization.batch_size),
        ("scaling.num_workers", scaling.min_workers),
        ("evaluation.every_epochs", config.evaluation.every_epochs),
        ("evaluation.batch_size", config.evaluation.batch_size),
        ("checkpointing.num_to_keep", config.checkpointing.num_to_keep),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if scaling.min_workers > scaling.max_workers:
        raise ConfigError(
            f"scaling.num_workers={scaling.workers_text} is [min, max]: min must not exceed max"
        )
    unkeepable = worker_counts_that_cannot_keep(
        optimization.batch_size, scaling.min_workers, scaling.max_workers
    )
    if unkeepable and not scaling.elastic:
        raise ConfigError(
            f"optimization.batch_size={optimization.batch_size} is the global batch and must "
            f"divide by scaling.num_workers={scaling.num_workers}; change one of them"
        )
    if unkeepable:
        raise ConfigError(
            f"optimization.batch_size={optimization.batch_size} cannot be kept on "
            f"{', '.join(map(str, unkeepable))} workers of scaling.num_workers="
            f"{scaling.workers_text}: every worker count in the range must divide the global "
            "batch; change the batch or the range"
        )
    if scaling.resize_check_s <= 0:
        raise ConfigError(f"scaling.resize_check_s must be positive, got {scaling.resize_check_s}")
    if config.tracking.node_metrics_interval_s <= 0:
        raise ConfigError(
            "tracking.node_metrics_interval_s must be positive, got "
            f"{config.tracking.node_metrics_interval_s}"
        )
    if config.tracking.register_model and not config.tracking.enabled:
        raise ConfigError(
            f"tracking.register_model={config.tracking.register_model} needs MLflow tracking, "
            "but tracking.enabled is false: enable tracking or drop the registration"
        )
    if optimization.lr <= 0:
        raise ConfigError(f"optimization.lr must be positive, got {optimization.lr}")
    if scaling.sync_batchnorm is True and not scaling.use_gpu:
        raise ConfigError(
            "scaling.sync_batchnorm is true but scaling.use_gpu is false: SyncBatchNorm needs "
            "GPU workers; set scaling.sync_batchnorm to auto (off on CPU) or false"
        )
    data_path = config.data.path
    is_local = data_path is not None and "://" not in data_path
    if check_paths and is_local and not Path(data_path).expanduser().exists():
        raise ConfigError(
            f"data.path {data_path} does not exist; prepare the data set there first "
            "(jobs/prepare_data.py) or set data.path to a shard folder or manifest.json"
        )
