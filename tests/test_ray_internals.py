"""What this project relies on in Ray beyond what its documentation promises, checked against
the installed Ray: the one entry of `BELOW_PUBLIC_API` in tests/test_architecture.py.

Each test names the function to recheck when an upgrade of Ray makes it fail.
"""

import numpy as np
import pytest
import ray
from ray.data import DataContext

from pipeline.data.shard_source import completed_passes

RECHECK_PASSES = (
    "recheck pipeline.data.shard_source.completed_passes (written against Ray 2.60.0) for this Ray "
    "version: per-epoch augmentation depends on it"
)


def test_a_new_data_context_counts_no_completed_pass():
    assert completed_passes(DataContext()) == 0, RECHECK_PASSES


@pytest.mark.integration
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
