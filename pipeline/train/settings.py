"""What the driver hands every worker for one run (picklable, computed once by the driver).

Kept free of torch so that the driver, which never trains, does not import it to build them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config.schema import ExperimentConfig, config_to_dict

if TYPE_CHECKING:
    from pipeline.data.shards import Manifest
    from pipeline.train.hooks import TrainingHook

# How rank 0 shows progress: a live bar (the driver's stdout is a terminal), a plain line per
# tenth of an epoch (a file or pipe: CI, `ray job logs`), or nothing (a Tune trial).
ConsoleMode = Literal["bar", "lines", "off"]

# What rank 0's training function returns as its "status" (Result.return_value).
COMPLETED_STATUS = "completed"
NONFINITE_STATUS = "nonfinite_loss"


@dataclass(frozen=True)
class RunDescription:
    """What a checkpoint says about the run that wrote it (fixed for the whole run)."""

    run_name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict[str, Any]
    manifest_path: str

    @staticmethod
    def of_run(
        run_name: str, config: ExperimentConfig, manifest: Manifest, manifest_path: str
    ) -> RunDescription:
        """The description of run `run_name` training with `config` on `manifest` (whose
        file is `manifest_path`)."""
        augmentation = config.data.augmentation
        return RunDescription(
            run_name=run_name,
            class_names=manifest.class_names,
            palette=manifest.palette,
            ignore_index=manifest.ignore_index,
            mean=tuple(augmentation.mean),
            std=tuple(augmentation.std),
            config=config_to_dict(config),
            manifest_path=manifest_path,
        )


@dataclass(frozen=True)
class LoopSettings:
    """Everything a worker needs, computed once by the driver (picklable)."""

    config: ExperimentConfig
    run_name: str
    run_folder: str
    description: RunDescription
    iterations_per_epoch: int
    total_epochs: int
    total_iterations: int
    tracking_uri: str | None
    experiment_name: str | None
    tracking_tags: dict[str, str]
    hooks: tuple[TrainingHook, ...] = ()
    # Rank 0's console: the placement, the epoch's progress and a line per epoch.
    console: ConsoleMode = "bar"

    def validates_after(self, epoch: int) -> bool:
        return epoch % self.config.evaluation.every_epochs == 0 or epoch == self.total_epochs
