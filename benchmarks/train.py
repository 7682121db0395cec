"""Training throughput with 1 and 2 workers, and the start-up cost of a submitted job.

python benchmarks/train.py [--epochs 3] [--size 64] [--num-train 64] [--skip-submit]

1. images/s of the synthetic set with 1 worker (the baseline) and 2 workers, on GPUs when
   present (one GPU per worker) else CPU workers at the config's fractional CPUs; reported as
   the mean over the epochs after the first (the first pays for start-up), and as a ratio to
   the 1-worker baseline measured in the same run.
2. Seconds from `ray job submit` to the first finished optimisation step of the job, against
   a throwaway single-node cluster started and stopped here, and where they went: job start
   (submit to the driver's process), then the run's own start-up timeline
   (`pipeline/train/startup.py`: each phase's wall time, recorded in the first epoch).

Prints a table and writes benchmarks/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from pipeline.config.schema import ExperimentConfig, config_to_yaml, load_config
from pipeline.storage import write_text_atomically
from pipeline.train import startup
from pipeline.train.run_folder import latest_checkpoint
from pipeline.train.state import read_progress

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "out" / "train.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="synthetic image size (pixels)")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--skip-submit", action="store_true", help="skip the job-submit timing")
    parser.add_argument("--skip-throughput", action="store_true", help="only the job-submit timing")
    return parser.parse_args()


def benchmark_config(args: argparse.Namespace, workers: int, work: Path) -> ExperimentConfig:
    use_gpu = torch.cuda.is_available()
    resources = '{"CPU": 1, "GPU": 1}' if use_gpu else '{"CPU": 0.5}'
    return load_config(
        REPO_ROOT / "configs" / "synthetic.yaml",
        [
            f"data.synthetic.num_train={args.num_train}",
            "data.synthetic.num_val=8",
            f"data.synthetic.size={args.size}",
            f"data.augmentation.crop_size=[{args.size}, {args.size}]",
            f"optimization.batch_size={args.batch_size}",
            f"optimization.epochs={args.epochs}",
            f"evaluation.every_epochs={args.epochs}",
            f"scaling.num_workers={workers}",
            f"scaling.use_gpu={'true' if use_gpu else 'false'}",
            f"scaling.resources_per_worker={resources}",
            f"checkpointing.storage_path={work / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            "tracking.experiment_name=benchmark",
        ],
    )


def throughput(args: argparse.Namespace, workers: int, work: Path) -> dict[str, float]:
    from pipeline.train.driver import fit_run

    config = benchmark_config(args, workers, work)
    started = time.perf_counter()
    outcome = fit_run(config, f"throughput-{workers}w-{int(time.time())}")
    wall = time.perf_counter() - started
    steady = [epoch["images_per_s"] for epoch in outcome.history[1:]] or [
        outcome.history[0]["images_per_s"]
    ]
    return {"images_per_s": sum(steady) / len(steady), "fit_wall_s": wall}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def submit_to_first_step(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Seconds from `ray job submit` to the job's first finished training step (`total_s`),
    and per phase (`job_start_s`, then the phases of `startup.phase_seconds`)."""
    temp_dir = tempfile.mkdtemp(prefix="raybench-", dir="/tmp")
    venv_bin = Path(sys.executable).parent
    environment = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    }
    environment.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    start = [
        str(venv_bin / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        *(f"{flag}={port}" for flag, port in ports.items()),
        f"--temp-dir={temp_dir}",
        f"--num-cpus={os.cpu_count()}",
        "--object-store-memory=1000000000",
        "--disable-usage-stats",
        "--include-dashboard=true",
    ]
    config = benchmark_config(args, 2, work)
    config_file = work / "submit.yaml"
    config_file.write_text(config_to_yaml(config))
    try:
        started = subprocess.run(
            start, env=environment, capture_output=True, text=True, timeout=180
        )
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
        submitted_at = time.time()
        subprocess.run(
            [
                str(venv_bin / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dashboard_port}",
                "--working-dir",
                ".",
                "--",
                "python",
                "jobs/train.py",
                "--config",
                str(config_file),
                "--name",
                "submitted",
            ],
            cwd=REPO_ROOT,
            env=environment,
            check=True,
            capture_output=True,
            timeout=1800,
        )
        first_epoch = read_progress(latest_checkpoint("submitted", work / "runs")).history[0]
        phases = {
            key.removeprefix(startup.MARK_PREFIX): seconds
            for key, seconds in startup.phase_seconds(first_epoch).items()
            if key != f"{startup.MARK_PREFIX}total_s"
        }
        driver_started = first_epoch[f"{startup.MARK_PREFIX}driver_process_unix_s"]
        return {
            "job_start_s": driver_started - submitted_at,
            **phases,
            "total_s": first_epoch["first_step_unix_s"] - submitted_at,
        }
    finally:
        _stop_cluster(temp_dir)


def _stop_cluster(temp_dir: str) -> None:
    """Stop only the processes of the cluster started above (found by its temp folder)."""
    for pid in _pids_mentioning(temp_dir):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _pids_mentioning(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids_mentioning(temp_dir):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _pids_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    pids.append(int(entry.name))
    return pids


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="apcnet-bench-train-"))
    os.environ.setdefault("APCNET_HOME", str(work / "home"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import ray

    one = two = None
    if not args.skip_throughput:
        ray.init(_temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"), include_dashboard=False)
        one = throughput(args, 1, work)
        two = throughput(args, 2, work)
        ray.shutdown()
    submit_latency = None if args.skip_submit else submit_to_first_step(args, work)

    results = {
        "device": device,
        "image_size": args.size,
        "global_batch": args.batch_size,
        "epochs": args.epochs,
        "workers_1": one,
        "workers_2": two,
        "speedup_2_over_1": two["images_per_s"] / one["images_per_s"] if one and two else None,
        "submit_to_first_step_s": submit_latency,
    }
    print(f"device: {device}   image {args.size}px   global batch {args.batch_size}")
    if one and two:
        print(f"{'workers':>8} {'images/s':>10} {'ratio':>7} {'fit wall s':>11}")
        for workers, row in ((1, one), (2, two)):
            ratio = row["images_per_s"] / one["images_per_s"]
            print(
                f"{workers:>8} {row['images_per_s']:>10.2f} {ratio:>7.2f} {row['fit_wall_s']:>11.1f}"
            )
    if submit_latency is not None:
        print(f"ray job submit -> first finished training step: {submit_latency['total_s']:.1f} s")
        print(
            f"  {'job start (submit to the driver process)':<48} {submit_latency['job_start_s']:>6.1f}"
        )
        for mark, (_, description) in startup.PHASES.items():
            if f"{mark}_s" in submit_latency:
                print(f"  {description:<48} {submit_latency[f'{mark}_s']:>6.1f}")
    write_text_atomically(OUTPUT, json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUTPUT}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
