"""The function Ray Train runs on every worker: it asks for the worker's data before torch.

The first batch of a run waits for a chain of new Ray processes: the data set's split
coordinator, started when rank 0 first asks for its shard, then the processes of Ray Data's
read and decode tasks. Importing torch and the training loop (2-3 s per worker on the 2-core
machine) before asking would put that import in front of the whole chain. So this module
imports neither: it asks for the shard (the coordinator's process starts now), opens the first
epoch's batches on a background thread (which starts the data set's execution as soon as its
own import of torch is through), and only then imports the loop, which forms the process group
(`pipeline.train.process_group`) and builds the model beside it.
"""

from __future__ import annotations

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
    world_size = ray.train.get_context().get_world_size()
    # A barrier across the workers; rank 0's call creates the split coordinator.
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    first_batches = EarlyStartedBatches(
        lambda: epoch_batches(train_shard, settings.config, world_size)
    )
    from pipeline.train.worker import run_training  # torch, the model, the loop

    return run_training(settings, marks, train_shard, first_batches)
