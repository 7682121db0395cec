"""Train APCNet with Ray Train: `python jobs/train.py [--config FILE] [--set key=value ...] [--name NAME]`.

With no arguments it trains the embedded default (configs/synthetic.yaml): the synthetic data
set, the small resnet18 APCNet, two CPU workers, the local MLflow store. A new run is named
`<config stem>-<YYYYmmdd-HHMMSS>`; naming an unfinished run resumes it, naming a finished one
says so and exits 0. Works the same under `ray job submit --working-dir . -- python jobs/train.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from pipeline.config.schema import ConfigError, load_config
from pipeline.train.driver import NonFiniteLossError, TrainOutcome, train
from pipeline.train.run_records import default_run_name, storage_root, stored_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optimization.lr=0.02 (repeatable)",
    )
    parser.add_argument("--name", help="run name; an existing unfinished run is resumed")
    return parser.parse_args(argv)


def print_summary(outcome: TrainOutcome) -> None:
    if outcome.status == "already_complete":
        print(
            f"run {outcome.run_name} is already complete (folder {outcome.run_folder}); nothing to do"
        )
    else:
        print(f"run {outcome.run_name} finished (folder {outcome.run_folder})")
    print(f"  best val_miou            {_number(outcome.best_val_miou)}")
    print(f"  majority-class val_miou  {_number(outcome.majority_baseline_miou)}")
    if outcome.best_val_miou is not None and outcome.majority_baseline_miou:
        print(
            f"  ratio                    {outcome.best_val_miou / outcome.majority_baseline_miou:.2f}x"
        )
    print(f"  best checkpoint          {outcome.best_checkpoint}")
    print(f"  latest checkpoint        {outcome.latest_checkpoint}")
    if outcome.mlflow_run_id:
        print(f"  MLflow run id            {outcome.mlflow_run_id}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    try:
        config = load_config(config_path, args.overrides)
        run_name = args.name or default_run_name(config_path)
        if args.name and not args.config and not args.overrides:
            # Naming an existing run alone resumes it with the config it was started with.
            config = stored_config(run_name, storage_root(config)) or config
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        outcome = train(config, run_name)
    except (ConfigError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_summary(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
