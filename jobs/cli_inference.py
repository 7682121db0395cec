"""Command-line options shared by jobs/evaluate.py and jobs/predict.py."""

import argparse

from pipeline.evaluate.testtime import DEFAULT_RATIOS, MODES, TestTimeOptions


def add_test_time_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode, --crop, --stride, --ratios, --flip, --resize."""
    group = parser.add_argument_group("test-time mode")
    group.add_argument("--mode", choices=MODES, default="whole", help="default: whole")
    group.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="slide window")
    group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="slide step")
    group.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=list(DEFAULT_RATIOS),
        help="msflip scales (default: 0.5 0.75 1.0 1.25 1.5 1.75)",
    )
    group.add_argument("--flip", action="store_true", help="msflip: add horizontal flips")
    group.add_argument(
        "--resize",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="keep-ratio test scale, e.g. 2048 512 (default: original size)",
    )


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --actors, --cpus-per-actor."""
    group = parser.add_argument_group("actor pool")
    group.add_argument("--batch-size", type=int, default=1, help="images per actor call")
    group.add_argument("--actors", type=int, help="model actors (default: from the cluster)")
    group.add_argument("--cpus-per-actor", type=float, help="CPUs each actor reserves")


def test_time_options(args: argparse.Namespace) -> TestTimeOptions:
    """TestTimeOptions from parsed arguments (ValueError naming the option when invalid)."""
    return TestTimeOptions(
        mode=args.mode,
        crop=tuple(args.crop) if args.crop else None,
        stride=tuple(args.stride) if args.stride else None,
        ratios=tuple(args.ratios),
        flip=args.flip,
        resize=tuple(args.resize) if args.resize else None,
    )
