"""Specification: a data set several times larger than Ray's object store streams through
training ingest: it is neither held in memory nor spilled whole.

`benchmarks/scale.py` runs as a user runs it, in a process of its own with a Ray instance of
its own (not the suite's shared one): the object store capped at 80 MiB, 1,000 training
images of 256 px (250 MiB decoded, about 3x the store) streamed for one epoch. A pipeline that
materialised the set would spill most of it (`--materialize`: 297 MiB spilled of 250).

Evaluation is not asserted here yet: today it spills more than its whole split (241 MiB for a
156 MiB split at this setting, benchmarks/RESULTS.md); its test comes with the fix.
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
        "--phases", "ingest", "--object-store-mib", str(OBJECT_STORE_MIB), "--cpus", "2",
        "--output", str(output), *extra,
    ]  # fmt: skip
    # Its own Ray instance: nothing may point it at the suite's.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 0
    return {row["phase"]: row for row in report["results"]}


def test_training_ingest_streams_a_set_three_times_the_object_store(tmp_path):
    scale_rows = run_scale_benchmark(tmp_path)
    train_mib = TRAIN_IMAGES * PIXELS * PIXELS * 4 / 2**20
    assert train_mib > 3 * OBJECT_STORE_MIB
    ingest = scale_rows["ingest"]
    assert ingest["images"] == TRAIN_IMAGES // 16 * 16  # every full batch of the epoch
    assert ingest["spilled_mib"] < train_mib / 2, ingest
    assert ingest["driver_growth_mib"] < train_mib / 4, ingest
    assert ingest["worker_growth_mib"] < train_mib / 4, ingest
