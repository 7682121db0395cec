"""Compare MLflow runs: a table sorted by a metric, and optionally their curves.

    python jobs/compare.py                                  # every run that logged val_miou
    python jobs/compare.py --parent synthetic-search-1 --plot curves.png
    python jobs/compare.py --tracking-uri http://127.0.0.1:5000 --metric train_loss --mode min

Prints the runs that logged the metric, best first; with --parent only the trials of that
search (a run id or a search name). --plot writes their validation curves as a PNG.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import add_tracking_arguments, job_parser, run_job
from pipeline.tracking.compare import (
    collect_runs,
    format_runs_table,
    plot_curves,
    resolve_parent_run_id,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    add_tracking_arguments(parser)
    parser.add_argument("--parent", help="only the child runs of this run id or search name")
    parser.add_argument("--metric", default="val_miou", help="metric to sort by (default val_miou)")
    parser.add_argument(
        "--mode", choices=("max", "min"), default="max", help="higher or lower is better"
    )
    parser.add_argument("--plot", type=Path, help="write the metric's curves to this PNG file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent_run_id = None
    if args.parent:
        parent_run_id = resolve_parent_run_id(
            args.parent, tracking_uri=args.tracking_uri, experiment=args.experiment
        )
    runs = collect_runs(
        args.metric,
        experiment=args.experiment,
        parent_run_id=parent_run_id,
        tracking_uri=args.tracking_uri,
        mode=args.mode,
    )
    if not runs:
        print(f"no runs logged {args.metric}")
        return 1
    print(format_runs_table(runs, args.metric))
    if args.plot:
        print(f"curves written to {plot_curves(runs, args.metric, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
