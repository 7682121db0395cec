"""The training worker's batch stream: the same batches in order, the time spent waiting for
them summed, and when the first one arrived."""

import time

from pipeline.train.batches import TimedBatches


def test_timed_batches_are_the_same_batches_in_order():
    assert list(TimedBatches(range(5))) == [0, 1, 2, 3, 4]
    assert list(TimedBatches([])) == []


def test_the_wait_for_each_batch_is_summed_and_the_first_arrival_noted():
    def slow_batches():
        for batch in ("first", "second"):
            time.sleep(0.05)
            yield batch

    timed = TimedBatches(slow_batches())
    assert timed.first_batch_unix_s is None
    assert list(timed) == ["first", "second"]
    assert timed.wait_s >= 0.1
    assert timed.first_batch_unix_s is not None
