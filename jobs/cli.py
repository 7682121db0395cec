"""What the jobs share: their option groups, `--debug`, `--verbose`, and `run_job`, which
reports a user error as one line.

Every job ends with `sys.exit(run_job(main))`. A mistake the user can fix (a
`pipeline.errors.UserError`, or apcnet's `CheckpointError` / `ExportError`) prints one line,
`error: <message>`, on stderr and exits with code 2, the code argparse uses for a bad option;
`--debug` adds the traceback. Any other exception is a bug and keeps its traceback.

The console shows the job's own lines (a header, progress bars, results) and Ray's warnings
and errors; `--verbose` brings back Ray's own INFO logs and progress bars, in the driver and
in every Ray process of the job (`pipeline.console.logs`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.console.logs import (  # imports no Ray: options stay fast
    VERBOSE_VARIABLE,
    set_before_ray_import,
)
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.evaluate.testtime import TestTimeOptions

USER_ERROR = 2
TRAINING_DIVERGED = 1
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
DEBUG_FLAG = "--debug"
VERBOSE_FLAG = "--verbose"
CHECKPOINT_HELP = "checkpoint file or Ray checkpoint folder"


def job_parser(docstring: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the job's docstring (its usage examples), with
    the --debug and --verbose flags every job has."""
    parser = argparse.ArgumentParser(
        description=docstring, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_debug_argument(parser)
    add_verbose_argument(parser)
    return parser


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """--debug: show the traceback of a user error too."""
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of an error, not only its line"
    )


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """--verbose: Ray's own logs and progress bars on the console too."""
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help="show Ray's own logs and progress bars too (Train, Data, Tune, core)",
    )


def run_job(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` (default: the command line) and return the process's exit code.

    main's own return value (None counts as 0); 2 with one line on stderr for a user error;
    1 with one line when training diverged (not the user's input, but not a bug either);
    130 with one line on Ctrl-C. With --debug the traceback comes before that line. Other
    exceptions propagate with their traceback; argparse exits with 2 on a bad option itself.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if _flags_requested(argv).verbose:
        # Before main starts Ray: the driver and every Ray process of the job read it.
        os.environ[VERBOSE_VARIABLE] = "1"
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        return _report("interrupted", INTERRUPTED, argv)
    except Exception as error:
        code = _one_line_exit_code(error)
        if code is None:
            raise
        return _report(f"error: {error}", code, argv)


def _one_line_exit_code(error: Exception) -> int | None:
    """The exit code of an error that is reported as one line; None for a bug."""
    if isinstance(error, UserError):
        return USER_ERROR
    # apcnet/ cannot subclass pipeline's UserError, and importing torch and Ray here would slow
    # the jobs that need neither; an error of a class that was never imported was not raised.
    if _is_instance(error, "apcnet.checkpoint", "CheckpointError") or _is_instance(
        error, "apcnet.export", "ExportError"
    ):
        return USER_ERROR
    if _is_instance(error, "pipeline.train.failures", "NonFiniteLossError"):
        return TRAINING_DIVERGED
    return None


def _is_instance(error: Exception, module: str, class_name: str) -> bool:
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(error, getattr(loaded, class_name))


def _report(line: str, code: int, argv: list[str]) -> int:
    if _flags_requested(argv).debug:
        traceback.print_exc()
    print(line, file=sys.stderr)
    return code


def _flags_requested(argv: list[str]) -> argparse.Namespace:
    """--debug and --verbose as in argv, read the way the job's own parser reads them
    (abbreviations included; the job's parser accepts or refuses the rest of argv)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_debug_argument(parser)
    add_verbose_argument(parser)
    known, _ = parser.parse_known_args(argv)
    return known


def add_config_arguments(parser: argparse.ArgumentParser, default: Path, name_help: str) -> None:
    """--config FILE (None: `default`), --set KEY=VALUE (repeatable, into `overrides`), --name."""
    group = parser.add_argument_group("config")
    group.add_argument("--config", type=Path, help=f"YAML config (default: configs/{default.name})")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optimization.lr=0.02 (repeatable)",
    )
    group.add_argument("--name", help=name_help)


def add_model_source_arguments(
    parser: argparse.ArgumentParser, *, registered: bool = False
) -> None:
    """Exactly one of --checkpoint, --run, --mmseg-checkpoint (and --model with `registered`)."""
    source = parser.add_mutually_exclusive_group(required=True)
    if registered:
        source.add_argument(
            "--model", help="a registered MLflow model: models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    source.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    source.add_argument("--run", help="training run name: use its best checkpoint")
    source.add_argument(
        "--mmseg-checkpoint", help="a reference-toolbox (MMSegmentation) APCNet checkpoint"
    )


def add_register_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--register NAME: register the result as a new version of an MLflow model."""
    parser.add_argument(
        "--register",
        metavar="NAME",
        help=f"register {what} as a new version of the MLflow model NAME "
        "(default: tracking.register_model; needs tracking)",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --split, --storage-path: the data set to read and where training runs live."""
    parser.add_argument(
        "--data", help="shard folder or manifest.json (default: the checkpoint's training data)"
    )
    add_split_argument(parser)
    parser.add_argument("--storage-path", help="where training runs live (default <home>/runs)")


def add_split_argument(parser: argparse.ArgumentParser) -> None:
    """--split, default val."""
    parser.add_argument("--split", default="val", help="data set split to read (default: val)")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """--tracking-uri, --experiment."""
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the home folder's store)",
    )
    parser.add_argument(
        "--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else apcnet)"
    )


def add_test_time_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode, --crop, --stride, --ratios, --flip, --resize."""
    # Imported here: torch comes with it, which the jobs that do not predict should not load.
    from pipeline.evaluate.testtime import DEFAULT_RATIOS, MODES

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


def chosen_test_time_options(args: argparse.Namespace) -> TestTimeOptions:
    """TestTimeOptions from parsed arguments (an InferenceError naming the option when invalid)."""
    from pipeline.evaluate.testtime import TestTimeOptions

    return TestTimeOptions(
        mode=args.mode,
        crop=tuple(args.crop) if args.crop else None,
        stride=tuple(args.stride) if args.stride else None,
        ratios=tuple(args.ratios),
        flip=args.flip,
        resize=tuple(args.resize) if args.resize else None,
    )


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --actors, --cpus-per-actor."""
    group = parser.add_argument_group("actor pool")
    group.add_argument("--batch-size", type=int, default=1, help="images per actor call")
    group.add_argument("--actors", type=int, help="model actors (default: from the cluster)")
    group.add_argument("--cpus-per-actor", type=float, help="CPUs each actor reserves")


# Every job imports this module before anything imports Ray, which reads these settings then.
set_before_ray_import(verbose=_flags_requested(sys.argv[1:]).verbose)
