"""Evaluate a trained APCNet on a data split with Ray Data, logging the result to MLflow.

python jobs/evaluate.py --run my-run --mode msflip
python jobs/evaluate.py --checkpoint runs/my-run/epoch_0009 --split val
python jobs/evaluate.py --model models:/demo/1      # or models:/demo@champion
python jobs/evaluate.py --mmseg-checkpoint apcnet_r50.pth --data data/ade20k --resize 2048 512
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import (
    add_data_arguments,
    add_model_source_arguments,
    add_pool_arguments,
    add_test_time_arguments,
    add_tracking_arguments,
    chosen_test_time_options,
    job_parser,
    run_job,
)
from pipeline.evaluate.evaluation import EvaluationRequest, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    add_model_source_arguments(parser, registered=True)
    add_data_arguments(parser)
    add_tracking_arguments(parser)
    parser.add_argument("--samples", type=int, default=4, help="rows of the logged sample grid")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    add_test_time_arguments(parser)
    add_pool_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = evaluate(
        EvaluationRequest(
            checkpoint=args.checkpoint,
            run=args.run,
            mmseg_checkpoint=args.mmseg_checkpoint,
            model=args.model,
            data=args.data,
            split=args.split,
            options=chosen_test_time_options(args),
            batch_size=args.batch_size,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            storage_path=args.storage_path,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            track=not args.no_tracking,
            num_samples=args.samples,
        )
    )
    print(report.table)
    print(f"model: {report.model_source}\ndata: {report.data_source} ({report.split})")
    print(f"{report.counts.num_images} images in {report.seconds:.1f} s")
    if report.mlflow_run_id:
        print(f"MLflow run: {report.mlflow_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
