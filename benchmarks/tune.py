"""ASHA against the full grid of the same space on the synthetic set.

Runs the grid twice, once with ASHA early stopping and once without (every trial trains all
epochs), then prints wall time, trial-epochs spent and the best configuration of each, and
whether both pick the same one. Writes benchmarks/out/tune.json.

    python benchmarks/tune.py [--epochs 4] [--set k=v ...]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.schema import load_config
from pipeline.storage import write_text_atomically
from pipeline.tune.search import SearchOutcome, run_search
from pipeline.tune.space import describe_parameters

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "out" / "tune.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (ASHA's max_t)")
    parser.add_argument(
        "--pool-scales", default="[[1], [1, 2, 3, 6]]", help="YAML list of scale sets"
    )
    parser.add_argument("--learning-rates", default="[0.03, 0.01, 0.001]", help="YAML list")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    return parser.parse_args()


def summary(outcome: SearchOutcome) -> dict[str, object]:
    best = outcome.best
    return {
        "wall_time_s": outcome.wall_time_s,
        "trials": len(outcome.trials),
        "trial_epochs": sum(row.epochs_run for row in outcome.trials),
        "stopped_early": sum(row.status == "stopped_early" for row in outcome.trials),
        "best_parameters": best.parameters if best else None,
        "best_val_miou": best.best_metric if best else None,
    }


def main() -> int:
    args = parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {}
    for label, asha in (("asha", True), ("grid", False)):
        config = load_config(
            REPO_ROOT / "configs" / "tune_synthetic.yaml",
            [
                f"optimization.epochs={args.epochs}",
                "tune.search=grid",
                "tune.num_samples=1",
                "tune.space.gla=[]",
                f"tune.space.pool_scales={args.pool_scales}",
                f"tune.space.learning_rate={args.learning_rates}",
                f"tune.asha.enabled={str(asha).lower()}",
                "tracking.experiment_name=apcnet-benchmarks",
                *args.overrides,
            ],
        )
        outcome = run_search(config, f"bench-tune-{label}-{stamp}")
        print(outcome.table)
        results[label] = summary(outcome)

    asha, grid = results["asha"], results["grid"]
    same_best = asha["best_parameters"] == grid["best_parameters"]
    print(
        f"\n{'search':8} {'wall s':>8} {'trials':>6} {'trial-epochs':>12} {'best val mIoU':>13}  best"
    )
    for label, row in results.items():
        best = describe_parameters(row["best_parameters"] or {})
        print(
            f"{label:8} {row['wall_time_s']:>8.0f} {row['trials']:>6} {row['trial_epochs']:>12} "
            f"{row['best_val_miou'] or float('nan'):>13.4f}  {best}"
        )
    time_ratio = asha["wall_time_s"] / grid["wall_time_s"]
    epoch_ratio = asha["trial_epochs"] / max(grid["trial_epochs"], 1)
    print(
        f"ASHA / grid: wall time {time_ratio:.2f}x, trial-epochs {epoch_ratio:.2f}x; "
        f"same best configuration: {'yes' if same_best else 'no'}"
    )
    report = {
        "epochs": args.epochs,
        "results": results,
        "wall_time_ratio": time_ratio,
        "trial_epochs_ratio": epoch_ratio,
        "same_best": same_best,
    }
    write_text_atomically(args.output, json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
