"""Start-up of a training job: the project's against a minimal job written with Ray's public API.

python benchmarks/train.py [--rounds 3]

Each round starts, one after the other, the project's training job (`python jobs/train.py`,
the default config on its built-in synthetic set, one epoch) and `minimal_train_start.py` (Ray's
documented APIs only: `TorchTrainer`, `read_parquet` + `map_batches`, `get_dataset_shard`,
`iter_torch_batches`, `prepare_model`) on the same shards, model, global batch, workers and
`resources_per_worker`. Each job is a new process that starts its own local Ray instance, as
`make train` does. Measured for each: the seconds from launching the job's process to the end
of its first optimisation step on rank 0 (the project's first phase, "imports and Ray
connection", starts at the launch too). The order alternates between rounds; the medians and
their ratio are reported, with the project's start-up phases (`pipeline/train/startup.py`,
medians over the rounds) so that a regression can be placed.

Prints a table and writes benchmarks/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.schema import ExperimentConfig, config_to_yaml, load_config
from pipeline.data.training_data import data_set_path
from pipeline.storage import write_text_atomically
from pipeline.train import startup
from pipeline.train.run_folder import latest_checkpoint
from pipeline.train.state import read_progress

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "out" / "train.json"
MINIMAL_JOB = REPO_ROOT / "benchmarks" / "minimal_train_start.py"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each job (default 3)")
    return parser.parse_args()


def benchmark_config(work: Path) -> ExperimentConfig:
    """The default config, one epoch, its runs and MLflow store in `work`."""
    return load_config(
        REPO_ROOT / "configs" / "synthetic.yaml",
        [
            "optimization.epochs=1",
            f"checkpointing.storage_path={work / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            "tracking.experiment_name=benchmark",
        ],
    )


def project_start(config_file: Path, run_name: str, work: Path) -> dict[str, float]:
    """Launch the project's training job; seconds to its first step and its phases."""
    launched = time.time()
    _run([sys.executable, "jobs/train.py", "--config", str(config_file), "--name", run_name])
    first_epoch = read_progress(latest_checkpoint(run_name, str(work / "runs"))).history[0]
    # From the launch, not from the driver's process start: Linux gives that to a second.
    marks = {**first_epoch, f"{startup.MARK_PREFIX}driver_process_unix_s": launched}
    phases = {
        key.removeprefix(startup.MARK_PREFIX): seconds
        for key, seconds in startup.phase_seconds(marks).items()
        if key != f"{startup.MARK_PREFIX}total_s"
    }
    return {**phases, "total_s": first_epoch["first_step_unix_s"] - launched}


def minimal_start(config: ExperimentConfig, data: str, work: Path) -> dict[str, float]:
    """Launch the minimal public-API job on the same data and scale; seconds to its first step."""
    out = work / "minimal.json"
    launched = time.time()
    _run(
        [
            sys.executable,
            str(MINIMAL_JOB),
            "--data",
            data,
            "--out",
            str(out),
            "--split",
            config.data.train_split,
            "--workers",
            str(config.scaling.num_workers),
            "--cpus-per-worker",
            str(config.scaling.resources_per_worker["CPU"]),
            "--global-batch",
            str(config.optimization.batch_size),
            "--crop",
            str(config.data.augmentation.crop_size[0]),
            "--backbone",
            config.model.backbone,
            "--channels",
            str(config.model.channels),
        ]
    )
    return {"total_s": json.loads(out.read_text())["first_step_unix_s"] - launched}


def _run(command: list[str]) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True
    )
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed:\n{finished.stderr[-3000:]}")


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="apcnet-bench-train-"))
    os.environ["APCNET_HOME"] = str(work / "home")
    config = benchmark_config(work)
    config_file = work / "train.yaml"
    config_file.write_text(config_to_yaml(config))
    data = data_set_path(config.data)  # generated once here, read by both jobs
    project: list[dict[str, float]] = []
    minimal: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        order = ("project", "minimal") if round_index % 2 == 0 else ("minimal", "project")
        for job in order:
            if job == "project":
                project.append(project_start(config_file, f"start-{round_index}", work))
            else:
                minimal.append(minimal_start(config, data, work))
            taken = (project if job == "project" else minimal)[-1]["total_s"]
            print(f"round {round_index + 1}, {job}: {taken:.1f} s to the first step", flush=True)

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    results = {
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "project_s": [run["total_s"] for run in project],
        "minimal_s": [run["total_s"] for run in minimal],
        "project_median_s": median(project, "total_s"),
        "minimal_median_s": median(minimal, "total_s"),
        "ratio": median(project, "total_s") / median(minimal, "total_s"),
        "project_phases_median_s": {key: median(project, key) for key in project[0]},
    }
    rows = [(mark, description) for mark, (_, description) in startup.PHASES.items()]
    width = max(len(description) for _, description in rows)
    print(f"launch -> first finished training step, median of {args.rounds} rounds (s)")
    print(f"  {'project (jobs/train.py)':<{width}} {results['project_median_s']:>8.1f}")
    print(f"  {'minimal public-API job':<{width}} {results['minimal_median_s']:>8.1f}")
    print(f"  {'ratio project / minimal':<{width}} {results['ratio']:>7.2f}x")
    print("the project's phases (medians, s)")
    for mark, description in rows:
        print(f"  {description:<{width}} {results['project_phases_median_s'][f'{mark}_s']:>8.1f}")
    write_text_atomically(OUTPUT, json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
