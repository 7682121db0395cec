"""Convert a raw segmentation data set (or generate the synthetic one) into Parquet shards.

python jobs/prepare_data.py --format voc --source ~/data/VOCdevkit --sbd ~/data/benchmark_RELEASE --output data/voc
python jobs/prepare_data.py --format ade20k --source ~/data/ADEChallengeData2016 --output s3://bucket/ade20k
python jobs/prepare_data.py --format synthetic --num-train 1000 --num-val 200 --output data/synthetic
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os

from jobs.cli import job_parser, run_job
from pipeline.data.formats.prepare import FORMATS, PrepareOptions, prepare_dataset
from pipeline.data.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, MANIFEST_NAME, Manifest
from pipeline.tracking.tables import text_table


def parse_args(argv: list[str] | None = None) -> PrepareOptions:
    parser = job_parser(__doc__)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--source", help="raw data set folder (required except for synthetic)")
    parser.add_argument("--output", required=True, help="output folder or s3:// / gs:// URI")
    parser.add_argument("--sbd", help="voc: SBD benchmark_RELEASE folder, adds the train_aug split")
    parser.add_argument(
        "--num-classes", type=int, help="pascal_context: 59 (default) or 60; folder: class count"
    )
    parser.add_argument("--val-fraction", type=float, help="folder without splits/: val share")
    parser.add_argument("--seed", type=int, default=0, help="folder split / synthetic scenes")
    parser.add_argument(
        "--include-test",
        action="store_true",
        help="cityscapes: also write the unlabelled test split",
    )
    parser.add_argument("--num-train", type=int, default=1000, help="synthetic: train images")
    parser.add_argument("--num-val", type=int, default=200, help="synthetic: val images")
    parser.add_argument("--size", type=int, default=128, help="synthetic: image side in pixels")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="decoding processes"
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad sample: stop (default) or skip it and record it in the manifest",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows per shard")
    parser.add_argument(
        "--max-mb", type=int, default=DEFAULT_MAX_BYTES // 2**20, help="MiB per shard"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.format != "synthetic" and not args.source:
        parser.error(f"--format {args.format} needs --source")
    return PrepareOptions(
        format=args.format,
        output=args.output,
        source=args.source,
        sbd=args.sbd,
        num_classes=args.num_classes,
        val_fraction=args.val_fraction,
        seed=args.seed,
        include_test=args.include_test,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        workers=args.workers,
        on_error=args.on_error,
        overwrite=args.overwrite,
        max_rows=args.max_rows,
        max_bytes=args.max_mb * 2**20,
        progress=not args.no_progress,
    )


def summary_table(manifest: Manifest) -> str:
    rows = [
        [split, info.rows, len(info.shards), sum(1 for s in manifest.skipped if s.split == split)]
        for split, info in manifest.splits.items()
    ]
    return text_table(["split", "images", "shards", "skipped"], rows)


def main(argv: list[str] | None = None) -> int:
    manifest = prepare_dataset(parse_args(argv))
    print(summary_table(manifest))
    for skipped in manifest.skipped:
        print(f"skipped {skipped.split}/{skipped.id}: {skipped.file}: {skipped.reason}")
    print(f"{manifest.dataset}: {manifest.num_classes} classes, {len(manifest.skipped)} skipped")
    print(f"manifest: {manifest.root.rstrip('/')}/{MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
