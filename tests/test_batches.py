"""The training worker's batch streams: the early-started first epoch gives the same batches
in the same order, opens them and fetches the first one before it is asked for, and raises an
error in opening or fetching where the batch is asked for."""

import threading

import pytest

from pipeline.train.batches import EarlyStartedBatches, TimedBatches


def test_early_started_batches_are_the_same_batches_in_order():
    assert list(EarlyStartedBatches(lambda: range(5))) == [0, 1, 2, 3, 4]
    assert list(EarlyStartedBatches(lambda: [])) == []


def test_the_batches_are_opened_and_the_first_fetched_before_anyone_asks():
    opened_by, fetched = [], threading.Event()

    def open_batches():
        opened_by.append(threading.current_thread())
        return batches()

    def batches():
        fetched.set()
        yield "first"
        yield "second"

    started = EarlyStartedBatches(open_batches)
    assert fetched.wait(timeout=10)
    assert opened_by != [threading.current_thread()]
    timed = TimedBatches(started)
    assert list(timed) == ["first", "second"]
    assert timed.first_batch_unix_s is not None


def test_an_error_in_the_early_fetch_is_raised_where_the_batch_is_asked_for():
    def batches():
        raise OSError("shard part-00003.parquet is unreadable")
        yield  # a generator

    started = EarlyStartedBatches(batches)
    with pytest.raises(OSError, match="part-00003"):
        next(iter(started))


def test_an_error_in_opening_the_batches_is_raised_where_the_batch_is_asked_for():
    def open_batches():
        raise ValueError("batch_size 3 is not a multiple of the 2 workers")

    with pytest.raises(ValueError, match="batch_size 3"):
        next(iter(EarlyStartedBatches(open_batches)))
