"""Test-only fault injection for the training loop (the `testing.*` config settings).

A worker really dies (`os._exit(1)`, no cleanup, like a crashed process) at a chosen moment,
once per run: a marker file in the run folder remembers the kill, so the replacement worker
that Ray Train starts trains on.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray.train

from pipeline.config.schema import TestingSection


def maybe_kill_worker(
    testing: TestingSection,
    run_folder: str,
    iterations_per_epoch: int,
    epoch: int,
    rank: int | None,
    *,
    after_metrics_logged: bool = False,
    mid_epoch: int | None = None,
) -> None:
    """End this worker process abruptly if a `testing.*` setting asks for this moment."""
    if after_metrics_logged:
        if testing.kill_after_logging_at_epoch != epoch or rank != 0:
            return
        moment = "after-logging"
    else:
        if testing.kill_at_epoch != epoch or mid_epoch is None:
            return
        # Mid-epoch kills happen before the epoch's middle step, on the last worker.
        first = (epoch - 1) * iterations_per_epoch + 1
        if mid_epoch != first + iterations_per_epoch // 2:
            return
        context = ray.train.get_context()
        rank = context.get_world_rank()
        if rank != context.get_world_size() - 1:
            return
        moment = "mid-epoch"
    marker = Path(run_folder) / f".testing-killed-{moment}-epoch-{epoch}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("killed by a testing.* setting\n")
    print(f"[testing] worker rank {rank} exits abruptly ({moment}, epoch {epoch})", flush=True)
    os._exit(1)
