"""Write a palette PNG mask (and optionally a colour overlay) for every image in a folder.

    python jobs/predict.py --checkpoint runs/my-run/epoch_0009 --input photos/ --output masks/
    python jobs/predict.py --checkpoint model.pt --input data/voc/manifest.json --split val \
        --output masks/ --overlay
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import (
    CHECKPOINT_HELP,
    add_pool_arguments,
    add_split_argument,
    add_test_time_arguments,
    chosen_test_time_options,
    job_parser,
    run_job,
)
from pipeline.evaluate.prediction import PredictionRequest, predict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument(
        "--input", required=True, help="a folder of images, or a data set folder / manifest.json"
    )
    parser.add_argument("--output", required=True, help="folder for <stem>.png masks")
    add_split_argument(parser)
    parser.add_argument(
        "--overlay", action="store_true", help="also write colour overlays to <output>/overlay/"
    )
    add_test_time_arguments(parser)
    add_pool_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = predict(
        PredictionRequest(
            checkpoint=args.checkpoint,
            input=args.input,
            output=args.output,
            split=args.split,
            options=chosen_test_time_options(args),
            overlay=args.overlay,
            batch_size=args.batch_size,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
        )
    )
    print(f"wrote {report.num_images} masks to {report.output} in {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
