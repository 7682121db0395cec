"""Specification of how the global batch splits over an elastic group's live workers."""

import pytest

from pipeline.config.batching import BatchPlan, batch_plan, worker_counts_that_cannot_keep


def test_a_full_size_group_takes_the_global_batch_in_one_micro_batch_per_worker():
    assert batch_plan(16, workers=4, max_workers=4) == BatchPlan(4, 4, 1, 16)


def test_a_group_at_half_size_accumulates_two_micro_batches_of_the_same_size():
    assert batch_plan(16, workers=2, max_workers=4) == BatchPlan(2, 4, 2, 16)


def test_a_single_worker_accumulates_the_whole_global_batch():
    assert batch_plan(16, workers=1, max_workers=4) == BatchPlan(1, 4, 4, 16)


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_every_worker_count_keeps_the_global_batch_in_micro_batches_no_larger_than_at_full_size(
    workers,
):
    plan = batch_plan(24, workers, max_workers=4)
    assert plan.workers * plan.micro_batch_size * plan.accumulation_steps == 24
    assert plan.images_per_worker == 24 // workers
    assert plan.micro_batch_size <= 24 // 4


def test_the_fewest_micro_batches_that_fit_are_taken():
    # 3 workers of at most 4 share 24 images: 8 each, micro-batches of at most 6, so 2 x 4.
    assert batch_plan(24, workers=3, max_workers=4) == BatchPlan(3, 4, 2, 24)


def test_a_worker_count_that_does_not_divide_the_global_batch_is_refused():
    with pytest.raises(ValueError, match=r"global batch of 16 images .* over 3 workers"):
        batch_plan(16, workers=3, max_workers=4)


def test_a_largest_group_that_does_not_divide_the_global_batch_is_refused():
    with pytest.raises(ValueError, match=r"global batch of 6 images .* over 4 workers"):
        batch_plan(6, workers=2, max_workers=4)


@pytest.mark.parametrize("workers", [0, 5])
def test_a_worker_count_outside_the_group_is_refused(workers):
    with pytest.raises(ValueError, match=rf"{workers} workers is outside 1\.\.4"):
        batch_plan(16, workers, max_workers=4)


@pytest.mark.parametrize(
    ("global_batch", "min_workers", "max_workers", "cannot_keep"),
    [(16, 1, 4, [3]), (24, 1, 4, []), (8, 2, 4, [3]), (12, 4, 6, [5]), (7, 2, 2, [2])],
)
def test_the_worker_counts_that_cannot_keep_the_global_batch_are_listed(
    global_batch, min_workers, max_workers, cannot_keep
):
    assert worker_counts_that_cannot_keep(global_batch, min_workers, max_workers) == cannot_keep
