"""Specification: a data set several times larger than Ray's object store streams through
training ingest and evaluation: neither holds the set in memory nor spills it whole.

`benchmarks/scale.py` runs as a user runs it, in a process of its own with a Ray instance of
its own (not the suite's shared one): the object store capped at 80 MiB, 1,000 training
images of 256 px (250 MiB decoded, about 3x the store) streamed for one epoch, and the whole
validation split (125 images, 156 MiB as the float32 images and int64 masks evaluation
decodes to, about 2x the store) evaluated through the actor pool. A pipeline that
materialised either set would hold or spill most of it (`--materialize` shows the figures it
then reports). Evaluation does spill its whole split today: that test is a strict xfail.
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
        "--sizes", str(TRAIN_IMAGES), "--pixels", str(PIXELS), "--epochs", "1",
        "--eval-images", "0", "--object-store-mib", str(OBJECT_STORE_MIB), "--cpus", "2",
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
def scale_rows(tmp_path_factory) -> dict[str, dict]:
    return run_scale_benchmark(tmp_path_factory.mktemp("scale"))


def test_training_ingest_streams_a_set_three_times_the_object_store(scale_rows):
    train_mib = TRAIN_IMAGES * PIXELS * PIXELS * 4 / 2**20
    assert train_mib > 3 * OBJECT_STORE_MIB
    ingest = scale_rows["ingest"]
    assert ingest["images"] == TRAIN_IMAGES // 16 * 16  # every full batch of the epoch
    assert ingest["spilled_mib"] < train_mib / 2, ingest
    assert ingest["driver_growth_mib"] < train_mib / 4, ingest
    assert ingest["worker_growth_mib"] < train_mib / 4, ingest


@pytest.mark.xfail(
    strict=True,
    reason="evaluation decodes to float32 in Ray Data tasks ahead of the actor pool: it spilled "
    "241 MiB for a split of 156 MiB (benchmarks/RESULTS.md); fixed when this passes",
)
def test_evaluation_streams_a_split_twice_the_object_store(scale_rows):
    val_images = TRAIN_IMAGES // 8
    # float32 (3, h, w) image and int64 (h, w) mask per validation image
    val_mib = val_images * PIXELS * PIXELS * (3 * 4 + 8) / 2**20
    assert val_mib > 1.9 * OBJECT_STORE_MIB
    evaluation = scale_rows["evaluation"]
    assert evaluation["images"] == val_images
    assert evaluation["driver_growth_mib"] < val_mib / 4, evaluation
    assert evaluation["spilled_mib"] < val_mib / 2, evaluation
