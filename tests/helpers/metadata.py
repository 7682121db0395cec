"""The checkpoint metadata of a training state built without a data set: numbered classes, grey
palette, the config's normalisation (no MLflow import: the GPU tests run where it is missing)."""

from __future__ import annotations

from pipeline.config.schema import ExperimentConfig, config_to_dict
from pipeline.train.settings import CheckpointMetadata


def numbered_classes_metadata(
    config: ExperimentConfig, num_classes: int, run_name: str, ignore_index: int = 255
) -> CheckpointMetadata:
    """Metadata of `run_name` with classes class_0..class_<num_classes - 1>."""
    augmentation = config.data.augmentation
    return CheckpointMetadata(
        run_name=run_name,
        class_names=tuple(f"class_{index}" for index in range(num_classes)),
        palette=tuple((index, index, index) for index in range(num_classes)),
        ignore_index=ignore_index,
        mean=tuple(augmentation.mean),
        std=tuple(augmentation.std),
        config=config_to_dict(config),
        manifest_path="",
    )
