"""What one epoch of a training worker measures: the same batches in order, the wait for them
summed, when the first arrived and the first step finished, and the mean loss."""

import math
import time

from pipeline.train.epoch_meter import EpochMeter


class _Bar:
    def __init__(self) -> None:
        self.steps, self.closed = 0, False

    def update(self, n: int = 1) -> None:
        self.steps += n

    def close(self) -> None:
        self.closed = True


def test_the_meter_hands_over_the_same_batches_and_counts_the_steps():
    bar = _Bar()
    meter = EpochMeter(bar, world_size=2)
    seen = []
    for batch in meter.timed(range(3)):
        seen.append(batch)
        meter.step_done(loss=float(batch), images=4)
    result = meter.result()
    assert seen == [0, 1, 2]
    assert (result.iterations, result.images, result.train_loss) == (3, 24, 1.0)
    assert bar.steps == 3 and bar.closed
    assert result.first_batch_unix_s is not None and result.first_step_unix_s is not None


def test_the_wait_for_each_batch_is_summed():
    def slow_batches():
        for batch in ("first", "second"):
            time.sleep(0.05)
            yield batch

    meter = EpochMeter(_Bar(), world_size=1)
    assert list(meter.timed(slow_batches())) == ["first", "second"]
    result = meter.result()
    assert result.data_wait_s >= 0.1
    assert result.first_step_unix_s is None and math.isnan(result.train_loss)


def test_an_epoch_stopped_by_a_non_finite_loss_says_at_which_iteration():
    meter = EpochMeter(_Bar(), world_size=1)
    assert meter.result(nonfinite_at_iteration=7).nonfinite_at_iteration == 7
