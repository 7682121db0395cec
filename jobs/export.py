"""Export a trained APCNet to ONE self-contained file (ONNX, or a torch.export .pt2 program)
plus <file>.json with its class names, palette, mean/std, input layout and minimum size.

The file takes a normalised float32 batch (N, 3, H, W) of any size at or above the minimum
(output stride + 1 px per side) and returns logits (N, classes, H, W). It is checked once
against PyTorch before it appears (--no-check skips that).

python jobs/export.py --run my-run --format onnx --output apcnet.onnx
python jobs/export.py --checkpoint runs/my-run/epoch_0009 --format torch-export --output apcnet.pt2
python jobs/export.py --mmseg-checkpoint apcnet_r50.pth --data data/ade20k --format onnx \\
    --output apcnet_r50.onnx
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse

from jobs.cli import add_model_source_arguments, job_parser, run_job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    add_model_source_arguments(parser)
    # Not argparse choices: an unknown format is a one-line error like every other (exit 2).
    parser.add_argument("--format", required=True, help="onnx or torch-export")
    parser.add_argument("--output", required=True, help="the file to write (.onnx or .pt2)")
    parser.add_argument(
        "--data",
        help="with --mmseg-checkpoint: the data set (shard folder or manifest.json) whose class "
        "names and palette go into the JSON (default: class_0, class_1, ...)",
    )
    parser.add_argument("--storage-path", help="where training runs live (default <home>/runs)")
    parser.add_argument(
        "--check-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size to trace and check at (default: 241 321)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not compare the file's logits to PyTorch's"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing: --help and bad options answer without loading torch.
    from pipeline.evaluate.export import DEFAULT_CHECK_SIZE, ExportRequest, export

    report = export(
        ExportRequest(
            output=args.output,
            format=args.format,
            checkpoint=args.checkpoint,
            run=args.run,
            mmseg_checkpoint=args.mmseg_checkpoint,
            data=args.data,
            storage_path=args.storage_path,
            check_size=tuple(args.check_size) if args.check_size else DEFAULT_CHECK_SIZE,
            check=not args.no_check,
        )
    )
    result = report.result
    print(f"model: {report.model_source}")
    print(f"wrote {result.model_path} ({result.format}) and {result.metadata_path}")
    print(f"input: float32 (N, 3, H, W), H and W at least {result.minimum_size}")
    if result.max_difference is not None:
        height, width = result.check_size
        print(
            f"checked at {height} x {width}: max |logit difference| to PyTorch "
            f"{result.max_difference:.2e} (logit scale {result.logit_scale:.3g})"
        )
    if report.placeholder_class_names:
        print("class names: placeholders (class_0, ...); --data names them from a data set")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
