"""What outlives a worker group within one run: which group trains, on which nodes, how far.

Ray Train restarts the whole worker group from the last checkpoint after a failure, a
preemption and every resize of an elastic group; the new group knows only that checkpoint.
`GroupLedger` is a small Ray actor that the driver starts on its own node for the run (it dies
with the driver: a run resumed by a new job starts a new ledger). Rank 0 of every group tells
it where the group runs, after each optimiser step how far it got, and after each checkpoint
how many epochs that checkpoint completed; so a new group's data start at the right epoch, and
it can say
what the restart cost (`resize_lost_iterations`: steps trained after the checkpoint it resumes
from, done again) and whether it shrank or grew, and the driver's `ClusterWatch` can say at
which epoch and step a node was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@dataclass(frozen=True)
class GroupRecord:
    """One worker group: its size, the node of each rank, and its last finished step."""

    workers: int
    nodes: tuple[str, ...]
    epoch: int = 0
    global_iteration: int = 0


class GroupLedger:
    """The run's record of its worker groups (a Ray actor: `ray.remote(GroupLedger)`)."""

    def __init__(self) -> None:
        self._current: GroupRecord | None = None
        self._completed_epochs: int | None = None

    def group_started(
        self, workers: int, nodes: tuple[str, ...], epoch: int, global_iteration: int
    ) -> GroupRecord | None:
        """Record a new group resuming at (`epoch` in progress, `global_iteration`); return the
        group it replaces (None for the run's first group under this driver)."""
        previous = self._current
        self._current = GroupRecord(workers, nodes, epoch, global_iteration)
        return previous

    def step_done(self, epoch: int, global_iteration: int) -> None:
        """Rank 0 finished optimiser step `global_iteration`, in `epoch`."""
        if self._current is not None:
            self._current = GroupRecord(
                self._current.workers, self._current.nodes, epoch, global_iteration
            )

    def current(self) -> GroupRecord | None:
        return self._current

    def checkpoint_reported(self, completed_epochs: int) -> None:
        """Rank 0 reported a checkpoint after `completed_epochs` whole epochs."""
        self._completed_epochs = completed_epochs

    def completed_epochs(self) -> int | None:
        """The whole epochs of the latest checkpoint reported in this run (None: none yet), the
        one a new group resumes from: its training data start at the next epoch
        (`pipeline.data.ingest.SegmentationDataConfig`)."""
        return self._completed_epochs


def lost_iterations(previous: GroupRecord | None, resumed_at_iteration: int) -> int:
    """Steps the previous group trained past the checkpoint a new group resumes from."""
    if previous is None:
        return 0
    return max(0, previous.global_iteration - resumed_at_iteration)


def start_ledger() -> Any:
    """A new `GroupLedger` actor on this process's node (so that it outlives every worker node),
    reserving no CPU; the caller kills it when the run ends."""
    here = ray.get_runtime_context().get_node_id()
    ledger = ray.remote(GroupLedger).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    )
    return ledger.remote()
