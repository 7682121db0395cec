"""Training throughput with 1 and 2 workers, and the start-up cost of a submitted job.

python benchmarks/train.py [--epochs 3] [--size 64] [--num-train 64] [--skip-submit]

1. images/s of the synthetic set with 1 worker (the baseline) and 2 workers, on GPUs when
   present (one GPU per worker) else CPU workers at the config's fractional CPUs; reported as
   the mean over the epochs after the first (the first pays for start-up), and as a ratio to
   the 1-worker baseline measured in the same run.
2. Seconds from `ray job submit` to the first finished optimisation step of the job, against
   a throwaway single-node cluster started and stopped here, and where they went: job start
   (submit to the driver's process), then the run's own start-up timeline
   (`pipeline/train/startup.py`: each phase's wall time, recorded in the first epoch). Two
   jobs in turn: the first on the fresh cluster, the second on the same cluster, running.

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


def submit_to_first_step(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    """Seconds from `ray job submit` to the job's first finished training step, on a cluster
    started here: the first job on the fresh cluster (`fresh_cluster`) and the next job on the
    same, now running, cluster (`running_cluster`). Each holds `total_s` and its phases
    (`job_start_s`, then the phases of `startup.phase_seconds`).

    The two differ by what a cluster keeps between jobs: Ray Data's and Ray Train's detached
    actors (the autoscaling coordinator that Train's controller waits on, Data's stats actor)
    are started by the first job and reused by the next."""
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
        return {
            cluster: _submitted_job_timeline(
                f"http://127.0.0.1:{dashboard_port}", config_file, run_name, work, environment
            )
            for cluster, run_name in (
                ("fresh_cluster", "submitted-first"),
                ("running_cluster", "submitted-second"),
            )
        }
    finally:
        # Ray's client server names the cluster only by its GCS address.
        _stop_cluster((temp_dir, f":{ports['--port']} "))


def _submitted_job_timeline(
    address: str, config_file: Path, run_name: str, work: Path, environment: dict[str, str]
) -> dict[str, float]:
    """Submit one training job, wait for it, and read its start-up timeline."""
    venv_bin = Path(sys.executable).parent
    submitted_at = time.time()
    subprocess.run(
        [
            str(venv_bin / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            ".",
            "--",
            "python",
            "jobs/train.py",
            "--config",
            str(config_file),
            "--name",
            run_name,
        ],
        cwd=REPO_ROOT,
        env=environment,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    first_epoch = read_progress(latest_checkpoint(run_name, work / "runs")).history[0]
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


def _stop_cluster(markers: tuple[str, str]) -> None:
    """Stop only the processes of the cluster started above: those whose command line names
    its temp folder (`markers[0]`) or GCS address, and their descendants. Ray's agents and
    workers rename themselves (`ray::DashboardAgent`), so only their parentage says which
    cluster they belong to; a dashboard agent left behind keeps a core busy for seconds after
    its raylet is gone, which would be charged to the next measurement."""
    cluster = _cluster_pids(markers)
    for pid in cluster:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _alive(cluster):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(markers[0], ignore_errors=True)


def _cluster_pids(markers: tuple[str, ...]) -> set[int]:
    """The processes whose command line contains one of `markers`, with their descendants."""
    parents: dict[int, int] = {}
    roots = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            # The parent is the second field after the command name, which may hold spaces.
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if any(marker in command for marker in markers):
                roots.add(int(entry.name))
    cluster = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in cluster} - cluster
        cluster |= children
        grew = bool(children)
    return cluster


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


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
        fresh, running = submit_latency["fresh_cluster"], submit_latency["running_cluster"]
        rows = [("job_start", "job start (submit to the driver process)")]
        rows += [(mark, description) for mark, (_, description) in startup.PHASES.items()]
        width = max(len(description) for _, description in rows)
        print("ray job submit -> first finished training step (s)")
        print(f"  {'phase':<{width}} {'fresh cluster':>14} {'running cluster':>16}")
        print(f"  {'total':<{width}} {fresh['total_s']:>14.1f} {running['total_s']:>16.1f}")
        for mark, description in rows:
            if f"{mark}_s" in fresh:
                print(
                    f"  {description:<{width}} {fresh[f'{mark}_s']:>14.1f}"
                    f" {running[f'{mark}_s']:>16.1f}"
                )
    write_text_atomically(OUTPUT, json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUTPUT}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
