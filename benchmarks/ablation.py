"""The paper's ablations (Tables 2 and 3) on the synthetic set, as Ray Tune grids.

Settings: the dilated-FCN baseline (no pyramid), APCNet with scales {1}, with {1,2,3,6}, and
{1,2,3,6} without global guidance (GLA), each repeated `--repeats` times with the same
budget (epochs, data, learning rate, head width; ASHA off). Prints mean and spread of the
best val mIoU per setting and writes benchmarks/out/ablation.json.

    python benchmarks/ablation.py [--epochs 10] [--repeats 3] [--num-train 96] [--size 64]
                                  [--set k=v ...]

The defaults (12 runs of 10 epochs on 96 images of 64 px, 48 val images scored every second
epoch) take about 26 minutes on a quiet 2-core CPU machine; `--size 96` about 36.

Repeat k runs with `data.seed=k` (a `tune.space.seed` grid dimension): the repeats of one
setting differ in data order, augmentation and initialisation, and every setting sees the
same seeds.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.schema import load_config
from pipeline.data.formats.synthetic import GENERATOR_VERSION
from pipeline.storage import write_text_atomically
from pipeline.tune.search import run_search

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "out" / "ablation.json"
# (label, pool scale sets, GLA): one Tune grid per GLA value, since GLA off is only paired
# with the full pyramid.
SEARCHES = (
    ("gla", [[], [1], [1, 2, 3, 6]], True),
    ("no-gla", [[1, 2, 3, 6]], False),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (the budget)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting")
    parser.add_argument("--num-train", type=int, default=96, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=48, help="synthetic val images")
    parser.add_argument("--size", type=int, default=64, help="synthetic image side = crop side")
    parser.add_argument(
        "--channels", type=int, default=256, help="model.channels (resnet18 head width / 8)"
    )
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate of every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    return parser.parse_args()


def setting_label(scales: str, gla: bool) -> str:
    if scales == "none":
        return "dilated FCN (no pyramid)"
    return f"APCNet {{{scales}}}" + ("" if gla else " without GLA")


def main() -> int:
    args = parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    per_setting: dict[str, list[float]] = {}
    epochs_run: dict[str, list[int]] = {}
    repeats = [f"tune.space.seed={list(range(args.repeats))}", "tune.num_samples=1"]
    for label, scale_sets, gla in SEARCHES:
        config = load_config(
            REPO_ROOT / "configs" / "tune_synthetic.yaml",
            [
                f"data.synthetic.num_train={args.num_train}",
                f"data.synthetic.num_val={args.num_val}",
                f"data.synthetic.size={args.size}",
                f"data.augmentation.crop_size=[{args.size}, {args.size}]",
                f"model.channels={args.channels}",
                f"optimization.epochs={args.epochs}",
                "evaluation.every_epochs=2",
                f"optimization.lr={args.lr}",
                "tune.search=grid",
                "tune.asha.enabled=false",
                f"tune.space.pool_scales={json.dumps(scale_sets)}",
                f"tune.space.gla=[{str(gla).lower()}]",
                f"tune.space.learning_rate=[{args.lr}]",
                "tracking.experiment_name=apcnet-ablation",
                *repeats,
                *args.overrides,
            ],
        )
        outcome = run_search(config, f"ablation-{label}-{stamp}")
        print(outcome.table)
        for row in outcome.trials:
            key = setting_label(str(row.parameters.get("pool_scales")), gla)
            per_setting.setdefault(key, []).append(row.best_metric)
            epochs_run.setdefault(key, []).append(row.epochs_run)

    rows = []
    for key, values in per_setting.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            {
                "setting": key,
                "runs": len(values),
                "mean_val_miou": statistics.fmean(values),
                "std_val_miou": spread,
                "min_val_miou": min(values),
                "max_val_miou": max(values),
                "values": values,
                "epochs": epochs_run[key],
            }
        )
    baseline = next((row for row in rows if row["setting"].startswith("dilated")), None)
    print(
        f"\nablation on the synthetic set, {args.size} px, {args.num_train} images, "
        f"{args.epochs} epochs, lr {args.lr}"
    )
    print(f"{'setting':34} {'runs':>4} {'mean val mIoU':>13} {'std':>7} {'vs baseline':>11}")
    for row in rows:
        ratio = row["mean_val_miou"] / baseline["mean_val_miou"] if baseline else float("nan")
        row["ratio_to_baseline"] = ratio
        print(
            f"{row['setting']:34} {row['runs']:>4} {row['mean_val_miou']:>13.4f} "
            f"{row['std_val_miou']:>7.4f} {ratio:>10.2f}x"
        )
    report = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "size": args.size,
        "generator_version": GENERATOR_VERSION,
        "channels": args.channels,
        "lr": args.lr,
        "wall_time_s": time.perf_counter() - started,
        "settings": rows,
    }
    write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output} ({report['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
