"""Elastic training's pieces that need no Ray instance: the ledger that outlives a worker group,
what a checkpoint saved on a preemption notice records, the check that a group reads the right
epoch's augmentation, Ray Train's failure settings, the console's lines for a lost node, and a
search refusing an elastic group. The whole path runs on the replica (tests/test_cluster_path.py).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from helpers.jobs import REPO_ROOT

from pipeline.config.schema import ScalingSection, load_config
from pipeline.config.typed import ConfigError
from pipeline.console import logs
from pipeline.data.ingest import AUGMENTATION_EPOCH_COLUMN
from pipeline.train.cluster_watch import RestartWatch
from pipeline.train.failures import elastic_restart_bound_s, failure_config
from pipeline.train.group_ledger import GroupLedger, lost_iterations
from pipeline.train.state import (
    Progress,
    _progress,
    checkpoint_folder_name,
    completed_epochs_of,
)
from pipeline.train.worker import augmentation_epoch_drift, grouped
from pipeline.tune.search import validate_search_config


def test_the_ledger_hands_a_new_group_the_previous_groups_size_and_last_step():
    ledger = GroupLedger(completed_epochs=1)  # a run resumed after epoch 1
    assert ledger.completed_epochs() == 1
    assert ledger.group_started(2, ("a", "b"), epoch=1, global_iteration=0) is None
    ledger.step_done(epoch=2, global_iteration=7)
    ledger.checkpoint_registered(completed_epochs=2)
    previous = ledger.group_started(1, ("a",), epoch=3, global_iteration=6)
    assert (previous.workers, previous.nodes, previous.global_iteration) == (2, ("a", "b"), 7)
    assert lost_iterations(previous, resumed_at_iteration=6) == 1
    assert lost_iterations(None, resumed_at_iteration=6) == 0
    assert ledger.completed_epochs() == 2
    assert ledger.current().workers == 1


def test_a_checkpoint_on_notice_records_the_steps_into_its_epoch_and_says_so_in_its_name():
    assert checkpoint_folder_name(4) == "epoch_0004"
    assert checkpoint_folder_name(4, notice_at_iteration=123) == "epoch_0004_notice_000123"
    assert completed_epochs_of("epoch_0004_notice_000123") == completed_epochs_of("epoch_0004") == 4
    assert completed_epochs_of(checkpoint_folder_name(12345)) == 12345
    extra = {"epoch": 4, "global_iteration": 123, "history": [], "steps_into_epoch": 3}
    assert _progress(extra) == Progress(4, 123, (), steps_into_epoch=3)
    # A checkpoint written before steps were recorded resumes at its epoch's end.
    assert _progress({"epoch": 4, "global_iteration": 120}).steps_into_epoch == 0


def test_rows_augmented_for_another_epoch_are_measured():
    rows = {AUGMENTATION_EPOCH_COLUMN: torch.tensor([2, 2], dtype=torch.int32)}
    assert augmentation_epoch_drift(rows, epoch=3) == 0
    assert augmentation_epoch_drift(rows, epoch=2) == 1
    assert augmentation_epoch_drift(rows, epoch=5) == 2


def test_micro_batches_group_into_steps_and_a_short_remainder_is_dropped():
    assert list(grouped(range(7), 2)) == [[0, 1], [2, 3], [4, 5]]
    assert list(grouped(range(3), 1)) == [[0], [1], [2]]


def test_an_elastic_group_may_retry_a_start_and_commits_a_notice_checkpoint_without_the_preempted():
    fixed = failure_config(ScalingSection(num_workers=2, max_failures=3))
    elastic = failure_config(ScalingSection(num_workers=(1, 2), max_failures=3))
    # Ray counts start failures over the whole run: an elastic run is bounded per restart.
    assert (fixed.controller_failure_limit, elastic.controller_failure_limit) == (0, -1)
    assert fixed.max_failures == elastic.max_failures == 3
    assert elastic.relax_collectives_on_preemption
    assert elastic.max_preemption_failures == -1  # a noticed preemption never uses max_failures


def test_every_restart_after_a_lost_node_gets_its_own_bound_paused_while_below_minimum():
    bound = elastic_restart_bound_s(ScalingSection(num_workers=(1, 2), node_wait_s=20))
    assert bound == 60
    watch = RestartWatch(bound)
    assert not watch.overdue(group_number=1, room_for_minimum=True, now=0)
    for loss in range(3):  # many losses in one run: each restart is timed on its own
        lost_at = 1000.0 * loss
        watch.node_lost(group_number=loss + 1, now=lost_at)
        assert not watch.overdue(loss + 1, room_for_minimum=True, now=lost_at + 59)
        assert not watch.overdue(loss + 2, room_for_minimum=True, now=lost_at + 59)  # restarted
        assert not watch.overdue(loss + 2, room_for_minimum=True, now=lost_at + 500)
    watch.node_lost(group_number=4, now=5000)
    assert not watch.overdue(4, room_for_minimum=False, now=5100)  # node_wait_s bounds this
    assert not watch.overdue(4, room_for_minimum=True, now=5159)
    assert watch.overdue(4, room_for_minimum=True, now=5161)
    assert watch.overdue(None, room_for_minimum=True, now=5161)


def test_the_ledger_numbers_each_group_of_the_run():
    ledger = GroupLedger()
    ledger.group_started(2, ("a", "b"), epoch=1, global_iteration=0)
    ledger.step_done(epoch=1, global_iteration=3)
    assert ledger.current().number == 1
    ledger.group_started(1, ("a",), epoch=1, global_iteration=2)
    assert (ledger.current().number, ledger.current().global_iteration) == (2, 2)


# What Ray's processes printed at a node loss on the replica, before the quiet filter.
RAY_LINES_AT_A_NODE_LOSS = (
    "Graceful shutdown of backend failed. This is expected if one of the workers has crashed.",
    "Traceback (most recent call last):",
    '  File "/venv/lib/python3.11/site-packages/ray/train/torch/config.py", line 333, in x',
    "    ray.get(futures, timeout=timeout_s)",
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    "ray.exceptions.ActorUnavailableError: The actor 40349f is unavailable: The actor is "
    "temporarily unavailable: RpcError: RPC error: failed to connect to all addresses",
    "[2026-12-06 22:02:04,505 E 23670 23670] (gcs_server) gcs_placement_group_scheduler.cc:273: "
    "Failed to remove 1 bundle(s) for placement group 1adcb3 at node 8acbe4 because",
    "The node with node id: 8acbe4 and address: 192.0.2.2 and node name: 192.0.2.2 has been "
    "marked dead because the detector has missed too many heartbeats from it.",
    "\tclass_name: RayTrainWorker",
    "(raylet) Raylet is terminated. Termination is unexpected. Possible reasons include: (1) "
    "SIGKILL by the user or system OOM killer\n    [state-dump] \n    [2026-12-06 23:08:57] "
    "(raylet) accessor.cc:475: Received address and liveness notification for node",
    "The actor died because its node has died. Node Id: 7063f1877313",
    "Error in control loop iteration: The worker group startup timed out after 20.0 seconds",
    "ray.train.v2._internal.exceptions.WorkerGroupStartupTimeoutError: The worker group startup",
    "2026-12-06 22:50:54,310\tWARNING preemption.py:217 -- PreemptionWatcher: preemption "
    "detected — preempted_node_ids=['7063f187'], preempted_ranks=[1], deadline_ms=1796597464296",
)
OUR_LINES_AT_A_NODE_LOSS = (
    "preemption notice: node 35df22f1 goes (12 s); checkpoint at epoch 5 step 1/2 (iteration 9)",
    "node 35df22f1 lost at epoch 5 step 1 (iteration 9): Ray Train restarts the workers from "
    "the last checkpoint",
    "shrinking to 1 workers (from 2): resuming at epoch 5 step 1 (iteration 9; 0 iterations "
    "since that checkpoint lost); 2 images x 2 micro-batches per worker, 4 per step",
    "placed    1 workers on 1 node: 9ca648f8 (rank 0)",
    "epoch 5/12  train_loss=2.736  lr=0.001231  images_per_s=2.237",
)


def test_rays_lines_of_an_expected_loss_are_dropped_unless_verbose_and_ours_are_kept():
    quiet = re.compile(logs.settings_before_ray_import(False, {})["RAY_DEDUP_LOGS_SKIP_REGEX"])
    verbose = re.compile(logs.settings_before_ray_import(True, {})["RAY_DEDUP_LOGS_SKIP_REGEX"])
    for line in RAY_LINES_AT_A_NODE_LOSS:
        assert quiet.search(line), line
        assert not verbose.search(line), line
    for line in OUR_LINES_AT_A_NODE_LOSS:
        assert not quiet.search(line), line


def test_a_search_refuses_an_elastic_group():
    config = load_config(REPO_ROOT / "configs" / "tune_synthetic.yaml")
    elastic = dataclasses.replace(
        config, scaling=dataclasses.replace(config.scaling, num_workers=(1, 2))
    )
    with pytest.raises(ConfigError, match=r"scaling\.num_workers=\[1, 2\] is an elastic group"):
        validate_search_config(elastic)
