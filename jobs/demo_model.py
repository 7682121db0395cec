"""Build APCNet on CPU, run one forward pass, print parameter counts and output shapes.

python jobs/demo_model.py
python jobs/demo_model.py --backbone resnet50 --num-classes 150 --height 65 --width 97
python jobs/demo_model.py --pool-scales ""       # the FCN baseline, no pyramid
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from apcnet import BACKBONE_NAMES, APCNet, count_parameters
from jobs.cli import job_parser, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--backbone", default="resnet18", choices=BACKBONE_NAMES)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument(
        "--pool-scales", default="1,2,3,6", help="comma-separated; empty for the FCN baseline"
    )
    parser.add_argument("--height", type=int, default=65)
    parser.add_argument("--width", type=int, default=97)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args(argv)

    pool_scales = [int(scale) for scale in args.pool_scales.split(",") if scale.strip()]
    model = APCNet(args.num_classes, backbone=args.backbone, pool_scales=pool_scales).eval()
    images = torch.randn(args.batch_size, 3, args.height, args.width)
    with torch.no_grad():
        result = model(images)

    print(f"APCNet {model.arguments}")
    for part in ("backbone", "decode_head", "aux_head"):
        print(f"  {part:<12} {count_parameters(getattr(model, part)):>12,} parameters")
    print(f"  {'total':<12} {count_parameters(model):>12,} parameters")
    print(f"input {tuple(images.shape)}")
    for name, logits in result.items():
        print(f"  {name:<4} {tuple(logits.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
