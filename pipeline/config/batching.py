"""How the global batch splits over the live training workers: the one rule.

`optimization.batch_size` is the global batch B: the images behind every optimiser step,
whatever the number of workers. With W workers (W must divide B), each worker takes B / W
images per step as `accumulation_steps` equal micro-batches, as few as keep a micro-batch at
most B / max_workers images: the size a worker takes when the group is at its largest, which is
what a worker's device memory is sized for. So a group at full size accumulates nothing, and a
group that shrank accumulates gradients over several micro-batches instead of growing them.

Examples (B = 16, num_workers = [1, 4], so micro-batches of at most 4): 4 workers x 4 images x 1;
2 workers x 4 images x 2 steps; 1 worker x 4 images x 4 steps. 3 workers cannot keep 16 images
(16 / 3 is no whole number), so [1, 4] with B = 16 is refused at start-up; B = 12 or 24 works.

The rule imports nothing of the pipeline: the config validates with it, workers apply it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """What each of `workers` workers does per optimiser step: `accumulation_steps` forward and
    backward passes over micro-batches of `micro_batch_size` images, gradients summed before
    the one optimiser step. `workers * micro_batch_size * accumulation_steps == global_batch`."""

    workers: int
    micro_batch_size: int
    accumulation_steps: int
    global_batch: int

    @property
    def images_per_worker(self) -> int:
        """Images one worker takes per optimiser step."""
        return self.micro_batch_size * self.accumulation_steps


def batch_plan(global_batch: int, workers: int, max_workers: int) -> BatchPlan:
    """The plan for `workers` live workers of a group of at most `max_workers`; ValueError when
    `workers` cannot keep `global_batch` (it does not divide it)."""
    if not 1 <= workers <= max_workers:
        raise ValueError(f"{workers} workers is outside 1..{max_workers}")
    if global_batch % workers != 0 or global_batch % max_workers != 0:
        raise ValueError(
            f"a global batch of {global_batch} images cannot be split evenly over "
            f"{workers if global_batch % workers else max_workers} workers"
        )
    share = global_batch // workers
    largest_micro_batch = global_batch // max_workers
    # The fewest equal micro-batches no larger than the full-size group's share.
    accumulation = next(
        count
        for count in range(1, share + 1)
        if share % count == 0 and share // count <= largest_micro_batch
    )
    return BatchPlan(workers, share // accumulation, accumulation, global_batch)


def worker_counts_that_cannot_keep(
    global_batch: int, min_workers: int, max_workers: int
) -> list[int]:
    """The worker counts in [min_workers, max_workers] that do not divide `global_batch`."""
    return [count for count in range(min_workers, max_workers + 1) if global_batch % count]
