"""Register a finished training run's best checkpoint in the MLflow Model Registry.

    python jobs/register.py --run voc-a --model-name voc-apcnet
    python jobs/register.py --run voc-a --model-name voc-apcnet --alias champion

The run's best checkpoint is logged to its MLflow run as a pyfunc model (RGB uint8 images
(N, H, W, 3) in, class-index masks (N, H, W) out) and registered as a new version of the
model, tagged with the run, its data set's manifest hash and its val mIoU; `--alias` points
`models:/NAME@ALIAS` at it. A run that has not finished is refused. Serve it with

    mlflow models serve -m models:/NAME/VERSION --env-manager local --host 127.0.0.1 --port 5001
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import add_tracking_arguments, job_parser, run_job
from pipeline.evaluate.registry import RegistrationRequest, register_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    parser.add_argument("--run", required=True, help="the finished training run's name")
    parser.add_argument("--model-name", required=True, help="the registered model's name")
    parser.add_argument("--alias", help="set this alias on the new version (e.g. champion)")
    parser.add_argument("--storage-path", help="where training runs live (default <home>/runs)")
    add_tracking_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    registration = register_run(
        RegistrationRequest(
            run=args.run,
            model_name=args.model_name,
            alias=args.alias,
            storage_path=args.storage_path,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
        )
    )
    print("\n".join(registration.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
