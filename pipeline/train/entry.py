"""The function Ray Train runs on every worker: it asks for its data while torch imports.

The first batch of a run waits for a chain of new Ray processes: the data set's split
coordinator, started when rank 0 first asks for its shard, then the processes of Ray Data's
read and decode tasks. Importing torch and the training loop (2-3 s of CPU per worker on the
2-core machine) before asking would put that import in front of the whole chain. So the
imports run on a thread while the worker asks for its shard (the coordinator's process starts
now, and the worker waits for it), the first epoch's batches are opened on another thread
(which starts the data set's execution), and the loop, once imported, forms the process group
(`pipeline.train.process_group`) and builds the model beside them. This module itself imports
neither torch nor the model: Ray Train's controller unpickles the function."""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future
from typing import Any

import ray.train

from pipeline.data.ingest import TRAIN_DATASET
from pipeline.train import startup
from pipeline.train.batches import EarlyStartedBatches, epoch_batches
from pipeline.train.console import quiet_training_worker
from pipeline.train.settings import LoopSettings


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point: `train_loop_config={"settings": LoopSettings(...),
    "startup_marks": {...}}`; returns what `pipeline.train.worker.run_training` returns."""
    marks = {**loop_config.get("startup_marks", {}), "loop_started": startup.now()}
    quiet_training_worker()
    settings: LoopSettings = loop_config["settings"]
    loop_imported = import_in_background(LOOP_MODULES)
    world_size = ray.train.get_context().get_world_size()
    # A barrier across the workers; rank 0's call creates the split coordinator.
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    first_batches = EarlyStartedBatches(
        lambda: epoch_batches(train_shard, settings.config, world_size)
    )
    loop_imported.result()
    from pipeline.train.worker import run_training  # imported above

    return run_training(settings, marks, train_shard, first_batches)


# What the loop imports before its first step, in the order it needs them: the loop's module
# (torch, the model), then torch._dynamo, which torch.optim imports when the optimizer is built
# or first steps (1.2 s of CPU on the 2-core machine).
LOOP_MODULES = ("pipeline.train.worker", "torch._dynamo")


def import_in_background(modules: tuple[str, ...]) -> Future:
    """Import `modules` on a thread; the future's result() re-raises an import error.

    The worker is mostly waiting while it asks for its shard (the data set's coordinator
    processes start meanwhile), so its imports fill that wait instead of following it."""
    imported: Future = Future()

    def run() -> None:
        try:
            for module in modules:
                importlib.import_module(module)
            imported.set_result(None)
        except BaseException as error:  # handed to the loop, which needs the modules
            imported.set_exception(error)

    threading.Thread(target=run, name="loop-import", daemon=True).start()
    return imported
