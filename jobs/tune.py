"""Search pyramid scales, learning rates and more with Ray Tune.

    python jobs/tune.py                        # the embedded search, configs/tune_synthetic.yaml
    python jobs/tune.py --config configs/voc_r50.yaml --set data.path=data/voc --num-samples 16
    python jobs/tune.py --name synthetic-search-1   # resume an interrupted search
    python jobs/tune.py --register demo        # and register the best trial's model as demo

The search space is the config's `tune` section. Every trial is the training job with the
trial's values; ASHA stops weak trials early; MLflow gets a parent run named NAME with one
child run per trial. Running the same NAME again resumes an interrupted search.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import add_config_arguments, add_register_argument, job_parser, run_job
from pipeline.config.schema import load_config
from pipeline.evaluate.registry import RegistrationRequest, model_to_register, register_run
from pipeline.train.run_folder import default_run_name, storage_root
from pipeline.tune.search import run_search

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tune_synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    add_config_arguments(
        parser,
        DEFAULT_CONFIG,
        name_help="search name; reuse it to resume (default: tune-<config>-<time>)",
    )
    parser.add_argument("--num-samples", type=int, help="overrides tune.num_samples")
    add_register_argument(parser, "the best trial's best checkpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    config = load_config(config_path, args.overrides)
    name = args.name or f"tune-{default_run_name(config_path)}"
    model_name = model_to_register(config, args.register)  # before the search, not after
    outcome = run_search(config, name, num_samples=args.num_samples)
    print()
    print(outcome.table)
    if outcome.best is not None:
        print(
            f"\nbest trial {outcome.best.trial_id}: {config.tune.metric}="
            f"{outcome.best.best_metric:.4f} ({outcome.best.parameters})"
        )
    print(f"MLflow parent run {outcome.parent_run_id}; Tune state {outcome.experiment_path}")
    print(f"wall time {outcome.wall_time_s:.0f} s{' (resumed)' if outcome.resumed else ''}")
    if outcome.interrupted:
        print(f"search interrupted: run again with --name {name} to resume it")
        return 1
    if outcome.best is None:
        print("no trial reported the metric: see the trial errors above")
        return 1
    if model_name:
        registration = register_run(
            RegistrationRequest(
                run=outcome.best.run_name,
                model_name=model_name,
                storage_path=storage_root(config),
                tracking_uri=config.tracking.tracking_uri,
                experiment=config.tracking.experiment_name,
                # ASHA may have stopped the best trial before its last epoch: its best
                # checkpoint is registered all the same.
                require_complete=False,
            )
        )
        print("\n".join(registration.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
