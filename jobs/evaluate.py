"""Evaluate a trained APCNet on a data split with Ray Data, logging the result to MLflow.

python jobs/evaluate.py --run my-run --mode msflip
python jobs/evaluate.py --checkpoint runs/my-run/checkpoint_000009 --split val
python jobs/evaluate.py --mmseg-checkpoint apcnet_r50.pth --data data/ade20k --resize 2048 512
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli_inference import add_pool_arguments, add_test_time_arguments, test_time_options
from pipeline.evaluate.evaluation import EvaluationRequest, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint file or Ray checkpoint folder")
    source.add_argument("--run", help="training run name: evaluate its best checkpoint")
    source.add_argument(
        "--mmseg-checkpoint", help="a reference-toolbox (MMSegmentation) APCNet checkpoint"
    )
    parser.add_argument(
        "--data", help="shard folder or manifest.json (default: the checkpoint's training data)"
    )
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--storage-path", help="where training runs live (default <home>/runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the home store)")
    parser.add_argument("--experiment", help="MLflow experiment (default: apcnet)")
    parser.add_argument("--samples", type=int, default=4, help="rows of the logged sample grid")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    add_test_time_arguments(parser)
    add_pool_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = evaluate(
        EvaluationRequest(
            checkpoint=args.checkpoint,
            run=args.run,
            mmseg_checkpoint=args.mmseg_checkpoint,
            data=args.data,
            split=args.split,
            options=test_time_options(args),
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


if __name__ == "__main__":
    main()
