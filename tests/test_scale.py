"""Specification: a data set several times larger than Ray's object store streams through
training ingest and through evaluation's actor pool: it is neither held in memory nor spilled
whole.

`benchmarks/scale.py` runs as a user runs it, in a process of its own with a Ray instance of
its own (not the suite's shared one): the object store capped at 80 MiB, 1,000 training
images of 256 px (250 MiB decoded, about 3x the store) streamed for one epoch of training
ingest, then evaluated, the whole split, on the evaluation's actor pool. The evaluation's model
is a 1x1 convolution (`--eval-model linear`): what is under test is the data path (decoding,
blocks to the actors, counts back), and APCNet would take minutes over 1,000 images on CPUs.
A pipeline that materialised the set fails both bounds (`--materialize`: ingest spilled 297 MiB
and evaluation 413 MiB, of a 250 MiB set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.jobs import REPO_ROOT

pytestmark = pytest.mark.integration

OBJECT_STORE_MIB = 80
TRAIN_IMAGES = 1000
PIXELS = 256


def run_scale_benchmark(folder, *extra: str) -> dict[str, dict]:
    """benchmarks/scale.py on one set; its JSON rows by phase."""
    output = folder / "scale.json"
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "scale.py"),
        "--sizes", str(TRAIN_IMAGES), "--pixels", str(PIXELS), "--epochs", "1", "--min-images", "0",
        "--phases", "ingest", "evaluation", "--eval-split", "train", "--eval-images", "0",
        "--eval-model", "linear", "--eval-batch-size", "32", "--eval-once",
        "--object-store-mib", str(OBJECT_STORE_MIB), "--cpus", "2",
        "--output", str(output), *extra,
    ]  # fmt: skip
    # Its own Ray instance: nothing may point it at the suite's.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 0
    return {row["phase"]: row for row in report["results"]}


@pytest.fixture(scope="module")
def scale_rows(tmp_path_factory):
    return run_scale_benchmark(tmp_path_factory.mktemp("scale"))


def test_training_ingest_streams_a_set_three_times_the_object_store(scale_rows):
    train_mib = TRAIN_IMAGES * PIXELS * PIXELS * 4 / 2**20
    assert train_mib > 3 * OBJECT_STORE_MIB
    ingest = scale_rows["ingest"]
    assert ingest["images"] == TRAIN_IMAGES // 16 * 16  # every full batch of the epoch
    assert ingest["spilled_mib"] < train_mib / 2, ingest
    assert ingest["driver_growth_mib"] < train_mib / 4, ingest
    assert ingest["worker_growth_mib"] < train_mib / 4, ingest


def test_evaluation_streams_a_split_three_times_the_object_store(scale_rows):
    split_mib = TRAIN_IMAGES * PIXELS * PIXELS * 4 / 2**20
    evaluation = scale_rows["evaluation"]
    assert evaluation["images"] == TRAIN_IMAGES  # every image of the split, once
    assert evaluation["spilled_mib"] < split_mib / 2, evaluation
    assert evaluation["driver_growth_mib"] < split_mib / 4, evaluation
    # No bound on the actors' memory: theirs grows by torch and the model when they start.
