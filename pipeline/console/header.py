"""A job's header lines: a label in a column of its own, then the text; the training run's
header and where its workers were placed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LABEL_WIDTH = 10


def labelled(label: str, text: str) -> str:
    """A header line: the label in a column of its own, then the text."""
    return f"{label:<{LABEL_WIDTH}}{text}"


def placement_line(nodes: Sequence[str]) -> str:
    """The header line saying where the workers run: `nodes[rank]` is rank's Ray node id,
    shown by its first 8 hex digits (as `ray list nodes` prints them)."""
    ranks_by_node: dict[str, list[int]] = {}
    for rank, node in enumerate(nodes):
        ranks_by_node.setdefault(node, []).append(rank)
    groups = [
        f"{node[:8]} ({'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))})"
        for node, ranks in ranks_by_node.items()
    ]
    count = len(ranks_by_node)
    where = f"{count} {'node' if count == 1 else 'nodes'}: {', '.join(groups)}"
    return labelled("placed", f"{len(nodes)} workers on {where}")


@dataclass(frozen=True)
class RunStart:
    """What a training run is about to do, for the job's header."""

    run_name: str
    run_folder: str
    resumed_after_epoch: int  # 0 for a new run
    data_path: str
    dataset: str
    split_rows: dict[str, int]  # the train and val splits trained and validated on
    num_classes: int
    model: str
    epochs: int
    iterations_per_epoch: int
    global_batch_size: int
    num_workers: str  # "2", or "[1, 2]" for an elastic group
    resources_per_worker: dict[str, float]
    use_gpu: bool
    tracking_uri: str | None  # None when tracking is off
    experiment: str | None
