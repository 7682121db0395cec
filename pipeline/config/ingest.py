"""The `data.ingest` config section: how Ray Data feeds the training workers.

`pipeline.data.ingest` applies it; it lives with the config so that the config imports no other
part of the pipeline.

The CPU split on a node: the training workers hold `scaling.resources_per_worker` each, and
Ray Train takes those CPUs out of Ray Data's budget; Ray Data decodes and augments with what is
left, or with at most `cpu_limit` CPUs when that is set. On a small CPU-only node the workers'
CPU fraction is the real lever (the default: 2 workers x 0.5 of a 2-core laptop leave one CPU,
which runs one decode task at a time); on a GPU node give the workers one CPU each and Ray Data
the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ShuffleMode = Literal["rows", "window", "files"]
SHUFFLE_MODES: tuple[ShuffleMode, ...] = ("rows", "window", "files")


@dataclass(frozen=True)
class IngestOptions:
    """Throughput knobs of the decode + augment stage (benchmarks/ingest.py measures them).

    batch_size: rows per augmented output block; blocks hold uint8 images and masks (a 512
        crop is about 1 MB per row).
    num_cpus: CPUs reserved per decode/augment task (or actor).
    concurrency: maximum parallel tasks (None: as many as the CPU budget allows); with
        `actors` the fixed size of the actor pool (None: one actor per whole CPU requested).
    cpu_limit: Ray Data's CPUs while it feeds training (None: what the training workers
        leave of the cluster).
    prefetch_batches: batches each training worker asks for ahead of the one it trains on.
    shuffle: how rows are reordered every epoch, always seeded from (seed, epoch):
        "rows": a full `random_shuffle` of the encoded rows (an all-to-all exchange);
        "window": the split read in runs of `shuffle_window` rows of one shard, the runs in a
            new order and each run's rows permuted before decoding (no exchange, so reading,
            decoding and augmenting fuse into one task); without `split_reads` a run is a
            whole shard file;
        "files": only the order of shard files changes.
    shuffle_window: encoded rows permuted together in "window" mode (about 100 kB each for
        VOC-sized JPEGs). With `split_reads` also the rows of one read block and one augment
        task: smaller windows make more, shorter tasks, which balance better over a few CPUs
        (the last task of an epoch runs alone) and bring the first block sooner.
    actors: run decode/augment on a pool of long-lived actors instead of tasks.
    split_reads: read the shards in blocks of one augment call's rows, each its own task.
        Without it a block is a whole shard file, which a single task then decodes alone
        while the other CPUs idle.
    """

    batch_size: int = 32
    num_cpus: float = 1.0
    concurrency: int | None = None
    cpu_limit: float | None = None
    prefetch_batches: int = 2
    shuffle: ShuffleMode = "window"
    shuffle_window: int = 32
    actors: bool = False
    split_reads: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"IngestOptions.batch_size must be >= 1, got {self.batch_size}")
        if self.num_cpus <= 0:
            raise ValueError(f"IngestOptions.num_cpus must be > 0, got {self.num_cpus}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(
                f"IngestOptions.concurrency must be None or >= 1, got {self.concurrency}"
            )
        if self.cpu_limit is not None and self.cpu_limit < self.num_cpus:
            raise ValueError(
                f"IngestOptions.cpu_limit must be None or at least num_cpus ({self.num_cpus}), "
                f"got {self.cpu_limit}"
            )
        if self.prefetch_batches < 0:
            raise ValueError(
                f"IngestOptions.prefetch_batches must be >= 0, got {self.prefetch_batches}"
            )
        if self.shuffle not in SHUFFLE_MODES:
            raise ValueError(
                f"IngestOptions.shuffle must be one of {SHUFFLE_MODES}, got {self.shuffle!r}"
            )
        if self.shuffle_window < 1:
            raise ValueError(
                f"IngestOptions.shuffle_window must be >= 1, got {self.shuffle_window}"
            )

    @property
    def rows_per_call(self) -> int:
        """Encoded rows handed to one augment call: a shuffle window or one output block."""
        return self.shuffle_window if self.shuffle == "window" else self.batch_size

    def rows_per_read_block(self, rows_per_call: int) -> int | None:
        """Rows of one read block for calls of `rows_per_call` rows (None: whole shards)."""
        return rows_per_call if self.split_reads else None
