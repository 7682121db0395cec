"""What this project relies on in Ray below its public API, checked against the installed Ray.

Each test names the function to recheck when an upgrade of Ray makes it fail.
"""

import re

import numpy as np
import pytest
import ray
from ray.data import DataContext

from pipeline.data.ingest import completed_passes
from pipeline.train import startup

RECHECK_PASSES = (
    "recheck pipeline.data.ingest.completed_passes (written against Ray 2.60.0) for this Ray "
    "version: per-epoch augmentation depends on it"
)


def test_a_new_data_context_counts_no_completed_pass():
    assert completed_passes(DataContext()) == 0, RECHECK_PASSES


def test_completed_passes_reads_the_counter_ray_data_raises_after_each_execution():
    context = DataContext()
    assert hasattr(context, "_execution_idx"), (
        f"DataContext has no _execution_idx any more; {RECHECK_PASSES}"
    )
    context._execution_idx = 3
    assert completed_passes(context) == 3, RECHECK_PASSES


@pytest.mark.slow
def test_each_pass_over_a_dataset_sees_the_next_pass_index_inside_its_tasks(ray_session):
    # Defined here so that it travels to the Ray workers by value (they cannot import tests/).
    def _pass_seen_by_the_task(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen = completed_passes(DataContext.get_current())
        return {"seen": np.full(len(batch["id"]), seen, dtype=np.int64)}

    dataset = ray.data.range(4, override_num_blocks=2).map_batches(
        _pass_seen_by_the_task, batch_format="numpy"
    )
    seen = [sorted({row["seen"] for row in dataset.take_all()}) for _ in range(3)]
    assert seen == [[0], [1], [2]], f"passes saw {seen}; {RECHECK_PASSES}"


RECHECK_LINE_FILTER = (
    "recheck pipeline.train.console._drop_forwarded_lines (written against Ray 2.60.0) for "
    "this Ray version: the quiet console drops Ray's PreemptionWatcher false alarm through it"
)


def test_the_driver_drops_forwarded_lines_matching_a_deduplicators_skip_pattern():
    from ray._private import ray_logging

    for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        assert hasattr(deduplicator, "skip_re"), RECHECK_LINE_FILTER
    deduplicator = ray_logging.LogDeduplicator(5, None, None)
    deduplicator.skip_re = re.compile("a false alarm")
    batch = {"ip": "127.0.0.1", "pid": 7, "lines": ["a real line", "[E] a false alarm here"]}
    printed = [line for out in deduplicator.deduplicate(batch) for line in out["lines"]]
    assert printed == ["a real line"], RECHECK_LINE_FILTER


def test_train_registers_with_the_autoscaling_coordinator_the_driver_started(ray_session):
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        TrainAutoscalingCoordinatorClient,
    )

    started = startup.start_autoscaling_coordinator()
    ray.get(started.__ray_ready__.remote(), timeout=60)
    found_by_train = TrainAutoscalingCoordinatorClient("train-test")._autoscaling_coordinator
    assert found_by_train._actor_id == started._actor_id, (
        "Ray Train's controller no longer uses the autoscaling coordinator that "
        "pipeline.train.startup.start_autoscaling_coordinator starts (written against Ray "
        "2.60.0): recheck it for this Ray version, or drop it"
    )
