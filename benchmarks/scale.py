"""Cost as the data grows: time and memory of preparing shards, training ingest, training and
evaluation for growing synthetic sets, on local disk, with Ray's object store capped.

For each size N (training images; the validation split is `--val-images` at every size):
- prepare: `jobs/prepare_data.py --format synthetic` as a user runs it (a subprocess):
  seconds, images/s, the peak resident memory of its processes;
- ingest: the training job's data path without the model (`pipeline.data.ingest.train_dataset`,
  the Dataset Ray Train re-executes every epoch, iterated with `iter_torch_batches` as a
  training worker does) over `--epochs` full epochs;
- training: `--train-steps` steps of `jobs/train.py` (the embedded default's model and
  workers) on the set, joined to the benchmark's Ray instance;
- evaluation: `--eval-images` images of `--eval-split` (validation by default) through the
  evaluation's actor pool (`pipeline.data.ingest.eval_dataset` into
  `pipeline.evaluate.counts.count_split_distributed`, whole-image mode; resnet18 APCNet, or
  with `--eval-model linear` a 1x1 convolution, which leaves the data path's own cost).
Each reports time to the first batch and steady-state images/s (after the first batch of each
epoch) separately, the driver's and the largest Ray worker's unique memory (USS: resident
pages no other process maps, so the object store's shared pages are not counted) above its
baseline after imports (`MemorySampler`), the object store's peak use (`ray.available_resources`,
every second) and the bytes spilled to disk during the phase (`ray memory --stats-only` at its
start and end). Ray runs in this process (`ray.init(address="local")`) with its object store
capped (`--object-store-mib`), so that the largest set's decoded images are several times it.

Prints a table, writes JSON and a log-log PNG (seconds and memory against images).

    python benchmarks/scale.py            # 1k, 4k, 16k images of 256 px (about 12 min here)
    python benchmarks/scale.py --quick    # 500 and 4000 images of 128 px (about 4 min)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from pipeline.storage import write_text_atomically

ROOT = Path(__file__).resolve().parent.parent
# The `ray` command of the environment running this script.
CLI = str(Path(sys.executable).parent / "ray")
MIB = 2**20
# What a synthetic sample decodes to: RGB image plus an 8-bit mask.
DECODED_BYTES_PER_PIXEL = 4


def unique_memory_mib(pid: int) -> float | None:
    """Unique set size (private resident pages) of process `pid` in MiB, from Linux's
    /proc/<pid>/smaps_rollup; None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            private = sum(
                int(line.split()[1])
                for line in rollup
                if line.startswith(("Private_Clean:", "Private_Dirty:"))
            )
    except (OSError, ValueError, IndexError):
        return None
    return private / 1024


def resident_memory_mib(pid: int) -> float | None:
    """Resident set size of `pid` in MiB (/proc/<pid>/status VmRSS), None when gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (children files)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def ray_worker_pids() -> list[int]:
    """The Ray worker processes of the instance this process started (its descendants whose
    command line names default_worker.py or was renamed ray::<task>)."""
    pids = []
    for pid in process_tree(os.getpid())[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if b"default_worker.py" in command or command.startswith(b"ray::"):
            pids.append(pid)
    return pids


def object_store_used_mib() -> float:
    """The object store's use now: its capacity less what `ray.available_resources()` reports
    free (from the raylets' periodic resource reports: a cheap call in this process)."""
    import ray

    capacity = ray.cluster_resources().get("object_store_memory", 0.0)
    free = ray.available_resources().get("object_store_memory", 0.0)
    return max(0.0, capacity - free) / MIB


def spilled_mib(gcs_address: str) -> float | None:
    """MiB spilled to disk since Ray started, from `ray memory --stats-only`: a process of its
    own costing about 2 s of CPU (a fifth of this machine's when run every 5 s), so it is read
    at a phase's start and end only."""
    try:
        result = subprocess.run(
            [CLI, "memory", "--stats-only", "--address", gcs_address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if "Plasma memory usage" not in result.stdout:
        return None
    spilled = re.search(r"Spilled (\d+) MiB", result.stdout)
    return float(spilled.group(1)) if spilled else 0.0


def quiesce(timeout_s: float = 60.0) -> None:
    """Wait until what an earlier phase left is gone: its Python objects collected, every CPU
    free and the object store empty again. Ray stops an evaluation's actor pool and frees the
    model it shipped asynchronously, a second or so after `count_split_distributed` returns;
    a phase started meanwhile would measure a smaller store than it was given."""
    import ray

    gc.collect()
    deadline = time.monotonic() + timeout_s
    total = ray.cluster_resources().get("CPU", 0.0)
    while time.monotonic() < deadline:
        cpus_free = ray.available_resources().get("CPU", 0.0) >= total
        if cpus_free and object_store_used_mib() < 1:
            return
        time.sleep(0.5)


@dataclass
class MemoryPeaks:
    driver_growth_mib: float = 0.0
    worker_growth_mib: float = 0.0
    object_store_peak_mib: float = 0.0
    spilled_mib: float = 0.0


class MemorySampler:
    """While open: this process's USS, every Ray worker's (the descendants of this process,
    which started Ray) and the object store's use, every `interval_s`; the bytes spilled
    between opening and closing. Keeps each process's growth above its baseline: the driver's
    and each worker's USS at opening (workers imported what the phase runs in an earlier
    pass); a worker that starts during the phase is measured against the median of those
    workers' baselines, so its own imports are not counted as the data's (Ray replaces idle
    workers, more often on longer runs)."""

    def __init__(self, gcs_address: str, interval_s: float = 1.0) -> None:
        self.gcs_address = gcs_address
        self.interval_s = interval_s
        self.peaks = MemoryPeaks()
        self._baselines: dict[int, float] = {}
        self._new_worker_baseline: float | None = None
        self._spilled_at_start: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        quiesce()
        self._driver_baseline = unique_memory_mib(os.getpid()) or 0.0
        for pid in ray_worker_pids():
            if (usage := unique_memory_mib(pid)) is not None:
                self._baselines[pid] = usage
        if self._baselines:
            self._new_worker_baseline = statistics.median(self._baselines.values())
        self._spilled_at_start = spilled_mib(self.gcs_address)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        spilled_at_end = spilled_mib(self.gcs_address)
        if spilled_at_end is not None and self._spilled_at_start is not None:
            self.peaks.spilled_mib = spilled_at_end - self._spilled_at_start

    def driver_growth_now(self) -> float:
        """This process's USS now above its baseline, in MiB."""
        return (unique_memory_mib(os.getpid()) or 0.0) - self._driver_baseline

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        peaks = self.peaks
        driver = unique_memory_mib(os.getpid())
        if driver is not None:
            peaks.driver_growth_mib = max(peaks.driver_growth_mib, driver - self._driver_baseline)
        for pid in ray_worker_pids():
            usage = unique_memory_mib(pid)
            if usage is None:
                continue
            baseline = self._baselines.setdefault(pid, self._new_worker_baseline or usage)
            peaks.worker_growth_mib = max(peaks.worker_growth_mib, usage - baseline)
        peaks.object_store_peak_mib = max(peaks.object_store_peak_mib, object_store_used_mib())


@dataclass
class PhaseResult:
    phase: str
    size: int  # training images of the set
    images: int  # images this phase processed
    seconds: float
    first_batch_s: float | None
    steady_images_per_s: float | None
    driver_growth_mib: float
    worker_growth_mib: float
    object_store_peak_mib: float
    spilled_mib: float
    notes: dict = field(default_factory=dict)


class BatchClock:
    """Times batches: the first batch's arrival and the images after it, per epoch."""

    def __init__(self) -> None:
        self.first_batch_s: float | None = None
        self.steady: list[tuple[int, float]] = []  # (images after the first batch, seconds)

    def epoch(self, batches, count_images) -> int:
        started = time.perf_counter()
        first_at, images, after_first = None, 0, 0
        for batch in batches:
            count = count_images(batch)
            images += count
            if first_at is None:
                first_at = time.perf_counter()
                if self.first_batch_s is None:
                    self.first_batch_s = first_at - started
            else:
                after_first += count
        if first_at is not None and after_first:
            self.steady.append((after_first, time.perf_counter() - first_at))
        return images

    @property
    def steady_images_per_s(self) -> float | None:
        images = sum(count for count, _ in self.steady)
        seconds = sum(seconds for _, seconds in self.steady)
        return images / seconds if seconds else None


def prepare(size: int, pixels: int, val_images: int, output: str) -> PhaseResult:
    """`jobs/prepare_data.py` for `size` training and `val_images` validation images; its peak
    resident memory sampled."""
    command = [
        sys.executable,
        str(ROOT / "jobs" / "prepare_data.py"),
        "--format", "synthetic",
        "--num-train", str(size),
        "--num-val", str(val_images),
        "--size", str(pixels),
        "--output", output, "--overwrite",
        "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        tree = [resident_memory_mib(pid) for pid in process_tree(process.pid)]
        peak = max(peak, sum(usage for usage in tree if usage))
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"prepare_data.py failed for {size} images (exit {process.returncode})")
    images = size + val_images
    return PhaseResult(
        "prepare", size, images, seconds, None, images / seconds, peak, 0.0, 0.0, 0.0,
        {"driver_growth_mib is": "the peak RSS of the job's processes"},
    )  # fmt: skip


def ingest(manifest, size: int, args: argparse.Namespace, gcs_address: str) -> PhaseResult:
    """The training data path over full epochs, consumed like a training worker (its batch
    prefetch included): `args.epochs`, or more until at least `args.min_images` images, so
    that a small set's rate is not one burst of a few seconds (`args.materialize`: the whole
    set materialised first, the variant that must not scale). Records the driver's USS growth
    after each epoch, which shows whether anything accumulates from one epoch to the next."""
    from pipeline.config.ingest import IngestOptions
    from pipeline.data.ingest import train_dataset
    from pipeline.data.transforms import AugmentationConfig

    crop = (args.pixels, args.pixels)
    dataset = train_dataset(manifest, "train", AugmentationConfig(crop_size=crop), seed=0)
    epochs = max(args.epochs, math.ceil(args.min_images / size))
    prefetch = IngestOptions().prefetch_batches
    clock = BatchClock()
    started = time.perf_counter()
    images, driver_after_epoch = 0, []
    with MemorySampler(gcs_address) as sampler:
        if args.materialize:
            dataset = dataset.materialize()
        for _ in range(epochs):
            batches = dataset.iter_torch_batches(
                batch_size=args.batch_size, drop_last=True, prefetch_batches=prefetch
            )
            images += clock.epoch(batches, lambda batch: len(batch["image"]))
            driver_after_epoch.append(round(sampler.driver_growth_now(), 1))
    seconds = time.perf_counter() - started
    peaks = sampler.peaks
    return PhaseResult(
        "ingest", size, images, seconds, clock.first_batch_s, clock.steady_images_per_s,
        peaks.driver_growth_mib, peaks.worker_growth_mib, peaks.object_store_peak_mib,
        peaks.spilled_mib, {"epochs": epochs, "driver_growth_mib_after_each_epoch": driver_after_epoch},
    )  # fmt: skip


def warm_up(manifest, args: argparse.Namespace) -> None:
    """One unmeasured epoch of the training data path, so that imports and Ray Data's workers
    are in place before anything is measured."""
    from pipeline.data.ingest import train_dataset
    from pipeline.data.transforms import AugmentationConfig

    crop = (args.pixels, args.pixels)
    dataset = train_dataset(manifest, "train", AugmentationConfig(crop_size=crop), seed=0)
    for _ in dataset.iter_torch_batches(batch_size=args.batch_size, drop_last=True):
        pass


def evaluation_model(name: str, num_classes: int):
    """The model evaluation runs: "apcnet" (resnet18 APCNet, random weights: a real model's
    cost) or "linear" (a 1x1 convolution from RGB to class scores: the data path's own cost,
    with no network to wait for, so a test can push a split several times the object store
    through the actor pool in seconds)."""
    import torch

    from apcnet import APCNet

    torch.manual_seed(0)
    if name == "linear":
        return torch.nn.Conv2d(3, num_classes, kernel_size=1).eval()
    return APCNet(num_classes, backbone="resnet18", channels=64).eval()


def evaluation(manifest, size: int, args: argparse.Namespace, gcs_address: str) -> PhaseResult:
    """`args.eval_images` images of `args.eval_split` (0: the whole split) through the
    evaluation's actor pool (`args.materialize`: the split materialised first)."""
    from pipeline.config.augmentation import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.data.ingest import eval_dataset
    from pipeline.evaluate.actor_pool import plan_actor_pool
    from pipeline.evaluate.counts import count_split_distributed
    from pipeline.evaluate.testtime import TestTimeOptions

    model = evaluation_model(args.eval_model, manifest.num_classes)
    split_rows = manifest.splits[args.eval_split].rows
    images = args.eval_images or split_rows
    pool = plan_actor_pool(2, 0.5)

    def evaluate(count: int) -> tuple[int, float]:
        dataset = eval_dataset(manifest, args.eval_split)
        if count < split_rows:
            dataset = dataset.limit(count)
        started = time.perf_counter()
        if args.materialize:
            dataset = dataset.materialize()
        counts = count_split_distributed(
            model, dataset, TestTimeOptions(), manifest.num_classes, manifest.ignore_index,
            pool, args.eval_batch_size, total_images=count, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )  # fmt: skip
        return counts.num_images, time.perf_counter() - started

    # Two runs, a quarter of the images and all of them: the time per image is the slope, the
    # fixed cost (actor pool start, model shipped, first batch) the intercept. With
    # --eval-once only the second, whose rate then includes the fixed cost.
    with MemorySampler(gcs_address) as sampler:
        few, few_seconds = (0, 0.0) if args.eval_once else evaluate(max(1, images // 4))
        counted, seconds = evaluate(images)
    per_image = (seconds - few_seconds) / (counted - few) if counted > few else None
    fixed = seconds - per_image * counted if per_image and not args.eval_once else None
    peaks = sampler.peaks
    return PhaseResult(
        "evaluation", size, counted, seconds, fixed, 1 / per_image if per_image else None,
        peaks.driver_growth_mib, peaks.worker_growth_mib, peaks.object_store_peak_mib,
        peaks.spilled_mib,
        {"first_batch_s is": "the fixed cost, from a run of a quarter",
         "split": args.eval_split, "model": args.eval_model,
         "batch_size": args.eval_batch_size},
    )  # fmt: skip


def run_training_job(
    manifest, size: int, args: argparse.Namespace, gcs_address: str, work: Path
) -> tuple[str, float, float, MemoryPeaks]:
    """`jobs/train.py` for `args.train_steps` steps on the set, its runs and MLflow store in
    `work`, joined to this Ray instance; its run name, seconds, peak USS and Ray's peaks."""
    run_name = f"scale-{size}"
    settings = [
        f"data.path={manifest.root}", "data.augmentation.crop_size=[128,128]",
        "optimization.epochs=null", f"optimization.iterations={args.train_steps}",
        f"checkpointing.storage_path={work / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
    ]  # fmt: skip
    command = [sys.executable, str(ROOT / "jobs" / "train.py"), "--name", run_name]
    for setting in settings:
        command += ["--set", setting]
    environment = {**os.environ, "RAY_ADDRESS": gcs_address}
    driver_peak = 0.0
    log = work / "train.log"
    started = time.perf_counter()
    with MemorySampler(gcs_address) as sampler, open(log, "w") as output:
        job = subprocess.Popen(command, env=environment, stdout=output, stderr=output)
        while job.poll() is None:
            driver_peak = max(driver_peak, unique_memory_mib(job.pid) or 0.0)
            time.sleep(0.5)
    seconds = time.perf_counter() - started
    if job.returncode != 0:
        raise SystemExit(
            f"jobs/train.py failed on the {size}-image set (exit {job.returncode}):\n"
            f"{log.read_text()[-3000:]}"
        )
    return run_name, seconds, driver_peak, sampler.peaks


def training(manifest, size: int, args: argparse.Namespace, gcs_address: str) -> PhaseResult:
    """`args.train_steps` optimisation steps of the training job as a user runs it
    (`jobs/train.py`: the embedded default's resnet18 APCNet and 2 workers, 128 px crops), on
    the set, joined to this Ray instance (RAY_ADDRESS). Reported: the job's seconds (closing
    validation of the val split included), its time to the first step (from the job's start:
    the start-up that could grow with the set), the steady images/s after the first step,
    the job process's peak USS as the driver's, and the training workers' growth."""
    from pipeline.train.epoch_logging import GLOBAL_BATCH_KEY
    from pipeline.train.run_folder import latest_checkpoint
    from pipeline.train.startup import MARK_PREFIX, TIME_TO_FIRST_STEP
    from pipeline.train.state import read_progress

    with tempfile.TemporaryDirectory(prefix="apcnet-bench-scale-training-") as folder:
        work = Path(folder)
        job, seconds, driver_peak, peaks = run_training_job(manifest, size, args, gcs_address, work)
        epoch = read_progress(latest_checkpoint(job, str(work / "runs"))).history[0]
    steps, batch = int(epoch["global_iteration"]), int(epoch[GLOBAL_BATCH_KEY])
    # The epoch's clock starts once the model is ready; the steps after the first are steady.
    marks = {name: epoch[f"{MARK_PREFIX}{name}_unix_s"] for name in ("model_ready", "first_step")}
    to_first_step = marks["first_step"] - marks["model_ready"]
    steady = (steps - 1) * batch / (epoch["epoch_time_s"] - to_first_step)
    return PhaseResult(
        "training", size, steps * batch, seconds, epoch[TIME_TO_FIRST_STEP], steady, driver_peak,
        peaks.worker_growth_mib, peaks.object_store_peak_mib, peaks.spilled_mib,
        {"steps": args.train_steps, "driver_growth_mib is": "the job process's peak USS",
         "first_batch_s is": "time_to_first_step_s, from the job's start"},
    )  # fmt: skip


class LocalRay:
    """A Ray instance of this process's own (`ray.init(address="local")`), its object store
    capped at `object_store_mib`; shut down on exit."""

    def __init__(self, cpus: int, object_store_mib: int) -> None:
        self.cpus, self.object_store_mib = cpus, object_store_mib
        self.gcs_address = ""

    def __enter__(self) -> LocalRay:
        import ray
        import ray.data

        ray.init(
            address="local",
            num_cpus=self.cpus,
            object_store_memory=self.object_store_mib * MIB,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        self.gcs_address = ray.get_runtime_context().gcs_address
        # Ray Data's progress: a log line per operator every few seconds otherwise (no TTY).
        ray.data.DataContext.get_current().enable_progress_bars = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        import ray

        ray.shutdown()


def run(args: argparse.Namespace) -> list[PhaseResult]:
    from pipeline.data.shards import load_manifest

    results = []
    with tempfile.TemporaryDirectory(prefix="apcnet-bench-scale-") as folder:
        work = Path(folder)
        sets = {}
        for size in args.sizes:
            location = (
                f"{args.root.rstrip('/')}/set-{size}" if args.root else str(work / f"set-{size}")
            )
            result = prepare(size, args.pixels, args.val_images, location)
            print_row(result)
            results.append(result)
            sets[size] = load_manifest(location)
        with LocalRay(args.cpus, args.object_store_mib) as local:
            # One unrecorded epoch of the smallest set first: the driver's imports and Ray Data's
            # workers are then in place, so each phase's growth is the data's, not start-up's.
            warm_up(sets[min(sets)], args)
            # Phase by phase, each over every size: an ingest measured right after an evaluation
            # in this process saw the driver's USS jump by up to 220 MiB (evaluation's torch
            # and model pages), which no ingest of its own caused.
            for name in args.phases:
                for size, manifest in sets.items():
                    result = PHASES[name](manifest, size, args, local.gcs_address)
                    print_row(result)
                    results.append(result)
    return results


# What runs on each prepared set, in this order (`--phases` picks).
PHASES = {"ingest": ingest, "training": training, "evaluation": evaluation}
HEADER = (
    f"{'phase':<10} {'size':>6} {'images':>6} {'seconds':>8} {'first batch s':>13} "
    f"{'steady img/s':>12} {'driver +MiB':>11} {'worker +MiB':>11} {'store peak MiB':>14} "
    f"{'spilled MiB':>11}"
)


def print_row(result: PhaseResult) -> None:
    def number(value: float | None, width: int, digits: int = 1) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    print(
        f"{result.phase:<10} {result.size:>6} {result.images:>6} {result.seconds:>8.1f} "
        f"{number(result.first_batch_s, 13, 2)} {number(result.steady_images_per_s, 12)} "
        f"{result.driver_growth_mib:>11.0f} {result.worker_growth_mib:>11.0f} "
        f"{result.object_store_peak_mib:>14.0f} {result.spilled_mib:>11.0f}",
        flush=True,
    )


def plot(results: list[PhaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for phase in dict.fromkeys(result.phase for result in results):
        rows = [result for result in results if result.phase == phase]
        sizes = [row.size for row in rows]
        time_axis.plot(sizes, [row.seconds for row in rows], marker="o", label=phase)
        memory_axis.plot(
            sizes, [max(row.driver_growth_mib, 1) for row in rows], marker="o",
            label=f"{phase}: driver" if phase != "prepare" else "prepare: peak RSS",
        )  # fmt: skip
        if phase != "prepare":
            memory_axis.plot(
                sizes, [max(row.worker_growth_mib, 1) for row in rows], marker="s",
                linestyle="--", label=f"{phase}: largest worker",
            )  # fmt: skip
            memory_axis.plot(
                sizes, [max(row.object_store_peak_mib, 1) for row in rows], marker="^",
                linestyle=":", label=f"{phase}: object store peak",
            )  # fmt: skip
    for axis, label in ((time_axis, "seconds"), (memory_axis, "MiB (growth above baseline)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("training images in the set")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 and 4000 images of 128 px")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--pixels", type=int, default=256, help="synthetic image side")
    parser.add_argument("--epochs", type=int, default=2, help="ingest epochs per size, at least")
    parser.add_argument(
        "--min-images", type=int, default=8000, help="ingest: more epochs until this many",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES),
        help="what to measure on each prepared set",
    )  # fmt: skip
    parser.add_argument(
        "--val-images", type=int, default=125,
        help="the val split, the same at every size: the training job validates it all",
    )  # fmt: skip
    parser.add_argument("--train-steps", type=int, default=10, help="training phase's steps")
    parser.add_argument("--eval-images", type=int, default=32, help="0: the whole split")
    parser.add_argument("--eval-split", choices=("val", "train"), default="val")
    parser.add_argument("--eval-batch-size", type=int, default=1, help="images per actor call")
    parser.add_argument(
        "--eval-once", action="store_true", help="one evaluation run, no fixed-cost estimate"
    )
    parser.add_argument(
        "--eval-model", choices=("apcnet", "linear"), default="apcnet",
        help="apcnet: resnet18 APCNet; linear: a 1x1 convolution (the data path's own cost)",
    )  # fmt: skip
    parser.add_argument(
        "--materialize", action="store_true", help="materialise each set first (must not scale)"
    )
    parser.add_argument(
        "--root", help="where to prepare the sets (s3:// too; replaced if there): a temp folder",
    )  # fmt: skip
    parser.add_argument("--object-store-mib", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "out" / "scale.json"))
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.pixels, args.eval_images, args.train_steps = [500, 4000], 128, 8, 5
        args.min_images = min(args.min_images, 4000)
        args.object_store_mib = min(args.object_store_mib, 80)
    largest = max(args.sizes) * args.pixels**2 * DECODED_BYTES_PER_PIXEL / MIB
    print(
        f"sizes {args.sizes} at {args.pixels} px: the largest set decodes to {largest:.0f} MiB, "
        f"{largest / args.object_store_mib:.1f}x the object store ({args.object_store_mib} MiB)"
    )
    print(HEADER)
    results = run(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {key: value for key, value in vars(args).items() if key != "output"},
        "largest_set_decoded_mib": largest,
        "results": [asdict(result) for result in results],
    }
    write_text_atomically(output, json.dumps(report, indent=2) + "\n")
    picture = output.with_suffix(".png")
    plot(results, picture)
    print(f"wrote {output} and {picture}")


if __name__ == "__main__":
    main()
