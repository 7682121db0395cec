"""What the driver hands every worker for one run, in a module that does not import torch.

Ray Train passes the training function's config to its controller as well as to the workers,
and the controller unpickles it as it starts, before it asks for the workers' processes. A
class defined in a module that imports torch would make the controller import torch there
(about 2 s on the 2-core machine, on the path to the first step), although it never trains.
So these classes live here, with only the config schema beside them; tests/test_ray_internals.py
checks that the controller never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config.schema import ExperimentConfig, config_to_dict

if TYPE_CHECKING:
    from pipeline.data.shards import Manifest
    from pipeline.train.hooks import TrainingHook

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
    # Rank 0's console: the placement, a bar and a line per epoch (off in a Tune trial).
    console: bool = True

    def validates_after(self, epoch: int) -> bool:
        return epoch % self.config.evaluation.every_epochs == 0 or epoch == self.total_epochs
