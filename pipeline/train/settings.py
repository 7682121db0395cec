"""What the driver hands every worker for one run (picklable, computed once by the driver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config.batching import BatchPlan, batch_plan
from pipeline.config.schema import ExperimentConfig, config_to_dict
from pipeline.console.progress import ConsoleMode
from pipeline.tracking.node_metrics import NodeMetricsTarget
from pipeline.train.hooks import TrainingHooks

if TYPE_CHECKING:
    from pipeline.data.shards import Manifest

# What rank 0's training function returns as its "status" (Result.return_value).
COMPLETED_STATUS = "completed"
NONFINITE_STATUS = "nonfinite_loss"


@dataclass(frozen=True)
class CheckpointMetadata:
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
    ) -> CheckpointMetadata:
        """The description of run `run_name` training with `config` on `manifest` (whose
        file is `manifest_path`)."""
        augmentation = config.data.augmentation
        return CheckpointMetadata(
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
    metadata: CheckpointMetadata
    iterations_per_epoch: int
    total_epochs: int
    total_iterations: int
    hooks: TrainingHooks
    # Rank 0's console: the placement, the epoch's progress and a line per epoch.
    console: ConsoleMode
    # Ask Ray Train after every step whether a node of the group is being preempted, and save
    # a checkpoint at once when one is (`pipeline.train.worker.checkpoint_on_notice`).
    checkpoint_on_notice: bool = True
    # Where each node's utilisation goes (`pipeline.train.node_reporter`); None: not logged.
    node_metrics: NodeMetricsTarget | None = None

    def batch_plan(self, workers: int) -> BatchPlan:
        """How `workers` live workers split the global batch (`pipeline.config.batching`)."""
        scaling = self.config.scaling
        return batch_plan(self.config.optimization.batch_size, workers, scaling.max_workers)

    def epochs_after(self, epoch: int) -> range:
        """The epochs still to train after `epoch` (0 for a new run)."""
        return range(epoch + 1, self.total_epochs + 1)

    def validates_after(self, epoch: int) -> bool:
        return epoch % self.config.evaluation.every_epochs == 0 or epoch == self.total_epochs
