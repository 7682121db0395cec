"""What outlives a worker group within one run: which group trains, on which nodes, how far.

Ray Train restarts the whole worker group from the last registered checkpoint after a failure,
a preemption and every resize of an elastic group; the new group knows only that checkpoint.
`GroupLedger` is a small Ray actor that the driver starts on its own node for the run (it dies
with the driver: a run resumed by a new job starts a new ledger, from the checkpoint that job
resumes). Rank 0 of every group tells it where the group runs and, after each optimiser step,
how far it got; `CheckpointsToLedger`, a Ray Train callback on the controller, tells it each
checkpoint Ray registers, the one the next group resumes from. So a new group's data start at
the right epoch, it can say what the restart cost (`resize_lost_iterations`: steps trained
after that checkpoint, done again) and whether it shrank or grew, and the driver's
`ClusterWatch` can say at which epoch and step a node was lost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import ray
import ray.train
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.train.state import completed_epochs_of

# How long the controller waits for the ledger (on the driver's node) to take a registration.
LEDGER_CALL_TIMEOUT_S = 30


@dataclass(frozen=True)
class GroupRecord:
    """One worker group: its size, the node of each rank, its last finished step, and which
    group of the run it is (1 for the first under this driver)."""

    workers: int
    nodes: tuple[str, ...]
    epoch: int = 0
    global_iteration: int = 0
    number: int = 1


class GroupLedger:
    """The run's record of its worker groups (a Ray actor: `ray.remote(GroupLedger)`)."""

    def __init__(self, completed_epochs: int = 0) -> None:
        self._current: GroupRecord | None = None
        self._completed_epochs = completed_epochs

    def group_started(
        self, workers: int, nodes: tuple[str, ...], epoch: int, global_iteration: int
    ) -> GroupRecord | None:
        """Record a new group resuming at (`epoch` in progress, `global_iteration`); return the
        group it replaces (None for the run's first group under this driver)."""
        previous = self._current
        number = previous.number + 1 if previous is not None else 1
        self._current = GroupRecord(workers, nodes, epoch, global_iteration, number)
        return previous

    def step_done(self, epoch: int, global_iteration: int) -> None:
        """Rank 0 finished optimiser step `global_iteration`, in `epoch`."""
        if self._current is not None:
            self._current = replace(self._current, epoch=epoch, global_iteration=global_iteration)

    def current(self) -> GroupRecord | None:
        return self._current

    def checkpoint_registered(self, completed_epochs: int) -> None:
        """Ray Train registered a checkpoint saved after `completed_epochs` whole epochs."""
        self._completed_epochs = completed_epochs

    def completed_epochs(self) -> int:
        """The whole epochs of the checkpoint a new group resumes from: the latest registered
        in this run, else the one the run started from (0 for a new run). Its training data
        start at the next epoch (`pipeline.data.ingest.SegmentationDataConfig`)."""
        return self._completed_epochs


class CheckpointsToLedger(ray.train.UserCallback):
    """Tells the run's `GroupLedger` about every checkpoint Ray Train registers. Runs on the
    controller after Ray's checkpoint manager has taken the report, so the ledger holds exactly
    the checkpoint a restarted group is given (`ray.train.get_checkpoint`): a report lost with
    its group never reaches it."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        if checkpoint is None:
            return
        completed = completed_epochs_of(PurePosixPath(checkpoint.path).name)
        ray.get(self.ledger.checkpoint_registered.remote(completed), timeout=LEDGER_CALL_TIMEOUT_S)


def lost_iterations(previous: GroupRecord | None, resumed_at_iteration: int) -> int:
    """Steps the previous group trained past the checkpoint a new group resumes from."""
    if previous is None:
        return 0
    return max(0, previous.global_iteration - resumed_at_iteration)


def start_ledger(completed_epochs: int) -> Any:
    """A new `GroupLedger` actor on this process's node (so that it outlives every worker node),
    reserving no CPU, for a run that starts from a checkpoint of `completed_epochs` epochs (0:
    none); the caller kills it when the run ends."""
    here = ray.get_runtime_context().get_node_id()
    ledger = ray.remote(GroupLedger).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    )
    return ledger.remote(completed_epochs)
