"""The driver's watch over the nodes under a training run: one console line per event, and the
bound on an elastic group's wait below its minimum.

Ray Train handles the events itself (it restarts the worker group from the last checkpoint when
a node goes, and an elastic group resizes when nodes come or go), but says nothing a person can
read: its own messages are tracebacks of the lost workers' connections. `ClusterWatch` polls
Ray's node table (`ray.nodes()`) and the run's `GroupLedger` once a second and prints:
- `node <id> lost at epoch E step S (iteration I): ...` for a node of the current group;
- for an elastic group: `waiting for nodes: ...` when the live nodes cannot hold its minimum,
  and `node <id> joined: ...` when a new node makes room for a larger group.
The workers print the rest (a preemption notice, and where a new group resumes).

An elastic group could wait forever in two ways, and the watch bounds both:
- below its minimum: Ray Train's elastic policy retries the start without a time limit;
  after `scaling.node_wait_s` the watch stops the run (`StopReason.BELOW_MINIMUM`);
- with room for its minimum, when no new group starts after one of its nodes was lost (its
  starts are retried without limit, `pipeline.train.failures.failure_config`); after
  `elastic_restart_bound_s` the watch stops the run (`StopReason.NO_RESTART`).
In Ray 2.60 the controller then loops without yielding, so even Train's own Ctrl-C abort (a
call to the controller) is never served. The watch therefore sets `stop_reason` and sends the
driver SIGUSR1, whose handler (installed for the run) raises `GroupBelowMinimum` out of the
driver's wait on `trainer.fit()`; the driver reports `WorkersNotPlacedError` and exits, and Ray
ends the run's controller and workers with the driver that owns them. Signal handlers live in
the process's main thread: a job's. A Tune trial is fixed-size (`pipeline.tune.search` refuses
an elastic group in a search).
"""

from __future__ import annotations

import enum
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from pipeline.config.schema import ScalingSection
from pipeline.train.failures import elastic_restart_bound_s, worker_resources, workers_that_fit
from pipeline.train.group_ledger import GroupRecord

POLL_S = 1.0
# Sent by the watch to its own process once an elastic group waited below min for too long.
STOP_SIGNAL = signal.SIGUSR1


class GroupBelowMinimum(KeyboardInterrupt):
    """Raised in the driver's main thread: the watch stopped the run (`stop_reason`). A
    KeyboardInterrupt, the one exception Ray's blocking `ray.get` lets a signal handler raise
    out of its wait (it arrives as a plain KeyboardInterrupt; the driver reads `gave_up`)."""


class StopReason(enum.Enum):
    BELOW_MINIMUM = "below_minimum"  # fewer than min workers fit for node_wait_s
    NO_RESTART = "no_restart"  # room for min, but no new group within the restart bound


class RestartWatch:
    """The bound on one restart of an elastic group: once a node of group N is lost, a group
    numbered above N must start within `bound_s`, counted from the last moment the live nodes
    could not hold the group's minimum (that wait has its own bound)."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._waiting_after: int | None = None
        self._deadline = 0.0

    def node_lost(self, group_number: int, now: float) -> None:
        if self._waiting_after is None:
            self._waiting_after = group_number
            self._deadline = now + self.bound_s

    def overdue(self, group_number: int | None, room_for_minimum: bool, now: float) -> bool:
        """True once the restart took too long; `group_number`: the ledger's current group."""
        if self._waiting_after is None:
            return False
        if group_number is not None and group_number > self._waiting_after:
            self._waiting_after = None  # restarted
            return False
        if not room_for_minimum:
            self._deadline = now + self.bound_s
            return False
        return now > self._deadline


class ClusterWatch:
    """Watches the cluster under one run while `with ClusterWatch(...):` is open."""

    def __init__(
        self,
        ledger: Any,
        scaling: ScalingSection,
        iterations_per_epoch: int,
        print_line: Callable[[str], None] | None,
    ) -> None:
        self._ledger = ledger
        self._scaling = scaling
        self._iterations_per_epoch = iterations_per_epoch
        self._print = print_line or (lambda line: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ClusterWatch", daemon=True)
        self._can_stop = scaling.elastic and threading.current_thread() is threading.main_thread()
        self._previous_handler: Any = None
        self._known_nodes: set[str] | None = None
        self._reported_lost: set[str] = set()
        self._short_since: float | None = None
        self._restart = RestartWatch(elastic_restart_bound_s(scaling))
        self.stop_reason: StopReason | None = None

    def __enter__(self) -> ClusterWatch:
        if self._can_stop:
            self._previous_handler = signal.signal(STOP_SIGNAL, _stop_the_run)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._can_stop:
            signal.signal(STOP_SIGNAL, self._previous_handler)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._poll()
            except Exception:
                continue

    def _poll(self) -> None:
        alive = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node.get("Alive")}
        group: GroupRecord | None = ray.get(self._ledger.current.remote(), timeout=10)
        now = time.monotonic()
        if group is not None:
            for node in sorted(set(group.nodes) - alive.keys() - self._reported_lost):
                self._reported_lost.add(node)
                self._restart.node_lost(group.number, now)
                self._print(
                    f"node {node[:8]} lost at {self._where(group)}: Ray Train restarts the "
                    "workers from the last checkpoint"
                )
        if self._scaling.elastic:
            self._watch_room(alive, group, now)
        self._known_nodes = set(alive)

    def _watch_room(
        self, alive: dict[str, dict[str, float]], group: GroupRecord | None, now: float
    ) -> None:
        scaling = self._scaling
        room = min(workers_that_fit(worker_resources(scaling), alive.values()), scaling.max_workers)
        number = group.number if group is not None else None
        if self._restart.overdue(number, room >= scaling.min_workers, now):
            self._stop_the_run(StopReason.NO_RESTART)
            return
        if room < scaling.min_workers:
            if self._short_since is None:
                self._short_since = now
                self._print(
                    f"waiting for nodes: the cluster holds {room} of the at least "
                    f"{scaling.min_workers} workers of scaling.num_workers={scaling.workers_text}; "
                    f"the run stops if none joins within scaling.node_wait_s="
                    f"{scaling.node_wait_s:g} s"
                )
            elif now - self._short_since > scaling.node_wait_s:
                self._stop_the_run(StopReason.BELOW_MINIMUM)
            return
        self._short_since = None
        joined = set(alive) - (self._known_nodes if self._known_nodes is not None else set(alive))
        if group is not None and joined and room > group.workers:
            for node in sorted(joined):
                self._print(
                    f"node {node[:8]} joined: room for {room} workers; the group grows at its "
                    f"next resize check (scaling.resize_check_s={scaling.resize_check_s:g} s)"
                )

    def _stop_the_run(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if self._can_stop:
                signal.raise_signal(STOP_SIGNAL)

    def _where(self, group: GroupRecord) -> str:
        step = group.global_iteration - (group.epoch - 1) * self._iterations_per_epoch
        return f"epoch {group.epoch} step {step} (iteration {group.global_iteration})"


def _stop_the_run(signum: int, frame: Any) -> None:
    raise GroupBelowMinimum(f"signal {signum}: the cluster watch stopped the elastic run")
