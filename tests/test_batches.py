"""The training worker's batch streams: the early-started first epoch gives the same batches
in the same order, fetches the first one before it is asked for, and raises the fetch's error
where the batch is asked for."""

import threading

import pytest

from pipeline.train.batches import EarlyStartedBatches, TimedBatches


def test_early_started_batches_are_the_same_batches_in_order():
    assert list(EarlyStartedBatches(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert list(EarlyStartedBatches(iter([]))) == []


def test_the_first_batch_is_fetched_before_anyone_asks():
    fetched = threading.Event()

    def batches():
        fetched.set()
        yield "first"
        yield "second"

    started = EarlyStartedBatches(batches())
    assert fetched.wait(timeout=10)
    timed = TimedBatches(started)
    assert list(timed) == ["first", "second"]
    assert timed.first_batch_unix_s is not None


def test_an_error_in_the_early_fetch_is_raised_where_the_batch_is_asked_for():
    def batches():
        raise OSError("shard part-00003.parquet is unreadable")
        yield  # a generator

    started = EarlyStartedBatches(batches())
    with pytest.raises(OSError, match="part-00003"):
        next(iter(started))
