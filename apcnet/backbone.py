"""Dilated ResNet backbones returning stage-3 and stage-4 features.

Layouts (state_dict keys of `DilatedResNet`):
- `stem.*`: V1c deep stem `stem.{0,3,6}` convs and `stem.{1,4,7}` BatchNorms (the reference
  toolbox's layout, so its ImageNet files load as they are); torchvision layout `stem.0`
  (7x7 conv, torchvision's `conv1`) and `stem.1` (torchvision's `bn1`).
- `layer{1..4}.{k}.{conv1,bn1,conv2,bn2[,conv3,bn3]}`, `...downsample.{0,1}`: identical to
  torchvision and to the reference toolbox.

Stages 3 and 4 trade their stride for dilation (output stride 8: dilation 2 and 4; output
stride 16: stage 4 only, dilation 2); the first block of a dilated stage uses half the dilation.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

BACKBONE_NAMES = ("resnet50_v1c", "resnet101_v1c", "resnet50", "resnet101", "resnet18")


@dataclass(frozen=True)
class BackboneSpec:
    """What distinguishes one backbone name from another."""

    block: str  # "bottleneck" or "basic"
    blocks_per_stage: tuple[int, int, int, int]
    deep_stem: bool  # V1c: three 3x3 convs instead of one 7x7 conv
    torchvision_weights: str | None  # torchvision weights enum class name, None: no such weights


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "resnet50_v1c": BackboneSpec("bottleneck", (3, 4, 6, 3), True, None),
    "resnet101_v1c": BackboneSpec("bottleneck", (3, 4, 23, 3), True, None),
    "resnet50": BackboneSpec("bottleneck", (3, 4, 6, 3), False, "ResNet50_Weights"),
    "resnet101": BackboneSpec("bottleneck", (3, 4, 23, 3), False, "ResNet101_Weights"),
    "resnet18": BackboneSpec("basic", (2, 2, 2, 2), False, "ResNet18_Weights"),
}


class BackboneFeatures(NamedTuple):
    """Stage-3 features (N, C3, H/os, W/os) and stage-4 features (N, C4, H/os, W/os)."""

    stage3: torch.Tensor
    stage4: torch.Tensor


class DilatedBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) that accepts dilation, unlike torchvision's.

    Both 3x3 convs use the block's dilation. Keys match torchvision's BasicBlock, so its
    ImageNet weights load. Input (N, in_channels, H, W) -> (N, channels, H/stride, W/stride).
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DilatedBottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1 convs; stride and dilation on the 3x3), the same
    layers in the same order as torchvision's `Bottleneck` (ResNet V1.5, which is also the
    reference toolbox's "pytorch" style), so keys and outputs match both.

    Written here rather than imported: `torchvision.models` imports all of torchvision, about
    a second of CPU in every process that builds the model (each training worker, Train's
    controller, each evaluation actor), which on a small machine is start-up time.
    Input (N, in_channels, H, W) -> (N, 4 * channels, H/stride, W/stride).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(
            channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _make_stem(deep_stem: bool) -> nn.Sequential:
    if deep_stem:
        return nn.Sequential(
            *_conv_bn_relu(3, 32, 2), *_conv_bn_relu(32, 32, 1), *_conv_bn_relu(32, 64, 1)
        )
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
    )


def _stage_strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if output_stride == 8:
        return (1, 2, 1, 1), (1, 1, 2, 4)
    if output_stride == 16:
        return (1, 2, 2, 1), (1, 1, 1, 2)
    raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


class DilatedResNet(nn.Module):
    """Dilated ResNet without its classifier: images (N, 3, H, W) -> `BackboneFeatures`.

    Use `build_backbone(name, output_stride, pretrained)` rather than this constructor.
    """

    def __init__(self, spec: BackboneSpec, output_stride: int = 8) -> None:
        super().__init__()
        strides, dilations = _stage_strides_and_dilations(output_stride)
        block_class = DilatedBottleneck if spec.block == "bottleneck" else DilatedBasicBlock
        self.stem = _make_stem(spec.deep_stem)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = 64
        stages = []
        for stage, blocks in enumerate(spec.blocks_per_stage):
            channels = 64 * 2**stage
            stage_module = self._make_stage(
                block_class, in_channels, channels, blocks, strides[stage], dilations[stage]
            )
            stages.append(stage_module)
            in_channels = channels * block_class.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage3_channels = 256 * block_class.expansion
        self.stage4_channels = 512 * block_class.expansion
        self._init_weights()

    @staticmethod
    def _make_stage(
        block_class: type[nn.Module],
        in_channels: int,
        channels: int,
        blocks: int,
        stride: int,
        dilation: int,
    ) -> nn.Sequential:
        out_channels = channels * block_class.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # The first block of a dilated stage uses half the dilation (reference layout).
        first_dilation = dilation // 2 if dilation > 1 else 1
        layers = [
            block_class(
                in_channels, channels, stride=stride, downsample=downsample, dilation=first_dilation
            )
        ]
        layers += [block_class(out_channels, channels, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        x = self.maxpool(self.stem(images))
        x = self.layer2(self.layer1(x))
        stage3 = self.layer3(x)
        stage4 = self.layer4(stage3)
        return BackboneFeatures(stage3, stage4)


def build_backbone(
    name: str, output_stride: int = 8, pretrained: str | None = None
) -> DilatedResNet:
    """Build a dilated ResNet by name (see `BACKBONE_NAMES`).

    pretrained: None (random init), a path to an ImageNet weights file (V1c names: the
    reference toolbox's layout with `stem.*` keys; other names: torchvision's layout), or
    "imagenet" for the torchvision names (torchvision's IMAGENET1K_V1 weights, from the torch
    hub cache or downloaded).
    """
    if name not in BACKBONE_SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    spec = BACKBONE_SPECS[name]
    backbone = DilatedResNet(spec, output_stride)
    if pretrained is not None:
        state_dict = load_backbone_state_dict(name, pretrained, spec.torchvision_weights)
        expected = set(backbone.state_dict())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"pretrained backbone weights {pretrained!r} do not fit backbone {name!r}: "
                f"missing keys {missing[:20]} ({len(missing)} in all), unexpected keys "
                f"{unexpected[:20]} ({len(unexpected)} in all). V1c backbones expect the "
                "reference toolbox layout (stem.0/1/3/4/6/7, layerN.*); resnet18/50/101 expect "
                "torchvision's layout (conv1, bn1, layerN.*)."
            )
        backbone.load_state_dict(state_dict)
    return backbone


def torchvision_key_to_backbone_key(key: str) -> str | None:
    """Map a torchvision ResNet key to this module's key; None for the classifier (`fc.*`)."""
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "stem.0." + key.removeprefix("conv1.")
    if key.startswith("bn1."):
        return "stem.1." + key.removeprefix("bn1.")
    return key


def download_imagenet_weights(
    url: str, backbone_name: str, model_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Load torchvision ImageNet weights from the torch hub cache, downloading them if absent.

    model_dir: the cache folder (default: `<TORCH_HOME>/hub/checkpoints`). Raises RuntimeError
    naming the URL and how to pass a local file when the file is neither cached nor
    downloadable (offline machines).
    """
    cache_dir = Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(cache_dir), map_location="cpu", progress=False, weights_only=True
        )
    except (OSError, RuntimeError) as error:
        file_name = url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not get ImageNet weights for backbone {backbone_name!r} from {url} "
            f"({error}). On a machine without internet, download that file elsewhere and "
            f"either pass its path, pretrained_backbone='/path/to/{file_name}', or copy it to "
            f"{cache_dir}/ (the torch hub cache; set TORCH_HOME to move it)."
        ) from error


def load_backbone_state_dict(
    name: str, pretrained: str | Path, torchvision_weights: str | None
) -> dict[str, torch.Tensor]:
    """Read ImageNet weights for backbone `name` and return them in `DilatedResNet`'s layout.

    pretrained: "imagenet" (torchvision names only) or a path to a torch file holding a state
    dict (bare, or under a "state_dict" key). torchvision-layout keys are renamed
    (`torchvision_key_to_backbone_key`); the classifier is dropped.
    """
    if str(pretrained) == "imagenet":
        if torchvision_weights is None:
            raise ValueError(
                f"pretrained_backbone='imagenet' is only available for torchvision layouts "
                f"(resnet18, resnet50, resnet101); {name!r} needs a local file: pass the path "
                "of the reference toolbox's ImageNet file (e.g. resnet50_v1c-*.pth)."
            )
        import torchvision.models  # only here: see DilatedBottleneck

        url = getattr(torchvision.models, torchvision_weights).IMAGENET1K_V1.url
        raw = download_imagenet_weights(url, name)
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained_backbone file {str(path)!r} does not exist; pass the path of an "
                "ImageNet weights file, or 'imagenet' for the torchvision layouts."
            )
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    state_dict = {}
    for key, value in raw.items():
        mapped = torchvision_key_to_backbone_key(key)
        if mapped is not None:
            state_dict[mapped] = value
    return state_dict
