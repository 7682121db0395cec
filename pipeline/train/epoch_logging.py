"""Every epoch that Ray Train registers, logged to the run's MLflow run from Train's controller.

`EpochsToMlflow` is a Ray Train `UserCallback`: Ray calls it in the training controller after
every worker has reported an epoch and its checkpoint is persisted. So MLflow holds exactly the
epochs Ray Train knows (the ones a restart resumes after and a Tune scheduler decides on), and
the workers never import MLflow. An epoch replayed after a restart is logged again and skipped
by the tracker, which ignores (metric, step) pairs the run already holds.

A run that stopped between persisting an epoch's checkpoint and this log (its driver killed)
gets the missing epochs when it resumes: the driver logs the resumed checkpoint's history
first (`log_checkpoint_history`).
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from pipeline.train import startup
from pipeline.train.run_folder import SCORE_METRIC

# Rank 0 reports where the workers run with the first epoch of each worker group: "rank:node,..."
WORKER_NODES_KEY = "worker_nodes"
# 1 when the epoch was validated; else its val_miou is only a placeholder (nan) that ranks the
# epoch's checkpoint lowest.
VALIDATED_KEY = "validated"
# The batch plan an epoch trained with (pipeline.config.batching) and the optimiser steps that
# restarts of the worker group during it trained twice (0 without a restart).
WORKERS_KEY = "workers"
ACCUMULATION_KEY = "accumulation_steps"
GLOBAL_BATCH_KEY = "global_batch"
RESIZE_LOST_KEY = "resize_lost_iterations"
# How far the epoch's rows were from the augmentation epoch it should read (0: none).
AUGMENTATION_DRIFT_KEY = "augmentation_epoch_drift"
# 1 on a report of a checkpoint saved on a preemption notice mid-epoch: not an epoch.
NOTICE_KEY = "notice_checkpoint"
# Reported for Ray Train's bookkeeping (or kept in the checkpoint's history), not for MLflow.
NOT_LOGGED = frozenset({"epoch", "first_step_unix_s", WORKER_NODES_KEY, VALIDATED_KEY})


class EpochsToMlflow(UserCallback):
    """Logs rank 0's reported metrics of each epoch to MLflow run `run_id` at step = epoch, and
    the workers' placement as a tag. MLflow is reached with a retry budget of `outage_wait_s`
    (a tracking server that stops answering for longer fails the run)."""

    def __init__(self, run_id: str, tracking_uri: str, outage_wait_s: float) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.outage_wait_s = outage_wait_s
        self._tracker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent from the driver to the controller, which opens its own client.
        return {**self.__dict__, "_tracker": None}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        rank_zero = metrics[0]
        if rank_zero.get(NOTICE_KEY):
            return  # a mid-epoch checkpoint; its epoch is logged when it ends
        tracker = self._tracker or self._attach()
        if WORKER_NODES_KEY in rank_zero:
            from pipeline.tracking.tags import WORKER_NODES_TAG

            tracker.set_tags({WORKER_NODES_TAG: rank_zero[WORKER_NODES_KEY]})
        tracker.log_metrics(logged_metrics(rank_zero), step=int(rank_zero["epoch"]))

    def _attach(self) -> Any:
        from pipeline.tracking.retry import RetryPolicy
        from pipeline.tracking.runs import RunTracker

        self._tracker = RunTracker.attach(
            self.run_id,
            tracking_uri=self.tracking_uri,
            retry=RetryPolicy(budget_s=self.outage_wait_s),
        )
        return self._tracker


def logged_metrics(reported: dict[str, Any]) -> dict[str, float]:
    """What of an epoch's metrics (as reported, or as a checkpoint's history keeps them) goes
    to MLflow: no bookkeeping, no start-up marks, no val_miou placeholder of an epoch without
    validation."""
    placeholder = reported.get(VALIDATED_KEY) == 0
    skipped = NOT_LOGGED | {SCORE_METRIC} if placeholder else NOT_LOGGED
    return {
        key: value
        for key, value in reported.items()
        if key not in skipped and not startup.is_mark(key)
    }


def log_checkpoint_history(tracker: Any, history: tuple[dict[str, float], ...]) -> None:
    """Log every epoch of a checkpoint's history that MLflow does not hold yet."""
    for metrics in history:
        tracker.log_metrics(logged_metrics(metrics), step=int(metrics["epoch"]))
