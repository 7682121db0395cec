"""Build an APCNet from a reference-toolbox (MMSegmentation) APCNet checkpoint.

Key mapping (`reference_key_to_apcnet`): this project names its modules like the reference,
so the only rename is `auxiliary_head.*` -> `aux_head.*`; `backbone.*` and `decode_head.*`
keys are identical.
"""

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from apcnet.checkpoint import torch_load_reason
from apcnet.model import APCNet

# Input normalisation of the reference checkpoints: RGB, 0-255 values.
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)

_BACKBONE_BY_STAGE3_BLOCKS = {6: "resnet50_v1c", 23: "resnet101_v1c"}


def reference_key_to_apcnet(key: str) -> str:
    """Map one reference-toolbox state_dict key to the matching `APCNet` key."""
    if key.startswith("auxiliary_head."):
        return "aux_head." + key.removeprefix("auxiliary_head.")
    return key


def apcnet_key_to_reference(key: str) -> str:
    """Inverse of `reference_key_to_apcnet`."""
    if key.startswith("aux_head."):
        return "auxiliary_head." + key.removeprefix("aux_head.")
    return key


def _read_state_dict(
    checkpoint: str | Path | Mapping[str, Any], source: str
) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, str | Path):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {str(path)!r} does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"reference checkpoint {source} is corrupt or holds objects that safe loading "
                f"refuses ({torch_load_reason(error)}). If you trust the file, extract its "
                "weights once with "
                "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth') "
                "and pass weights.pth"
            ) from error
        except (RuntimeError, EOFError, OSError) as error:
            raise ValueError(
                f"reference checkpoint {source} is unreadable (truncated or corrupt file?): "
                f"{torch_load_reason(error)}"
            ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"reference checkpoint {source} is not a dict but {type(checkpoint)}")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError(f"reference checkpoint {source} holds no state_dict")
    return dict(state_dict)


def _indices(state_dict: Mapping[str, Any], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return sorted(found)


def infer_arguments(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """APCNet constructor arguments that reproduce the architecture of a reference state dict."""
    if "backbone.stem.0.weight" not in state_dict:
        raise ValueError(
            f"reference checkpoint {source} has no backbone.stem.0.weight: only ResNet-V1c "
            "(deep stem) APCNet checkpoints of the reference toolbox are supported"
        )
    stage3_blocks = len(_indices(state_dict, "backbone.layer3."))
    if stage3_blocks not in _BACKBONE_BY_STAGE3_BLOCKS:
        raise ValueError(
            f"reference checkpoint {source} has {stage3_blocks} blocks in backbone.layer3; "
            "expected 6 (ResNet-50) or 23 (ResNet-101)"
        )
    if "decode_head.conv_seg.weight" not in state_dict:
        raise ValueError(f"reference checkpoint {source} has no decode_head.conv_seg.weight")
    pool_scales = []
    for index in _indices(state_dict, "decode_head.acm_modules."):
        affinity_outputs = state_dict[f"decode_head.acm_modules.{index}.gla.weight"].shape[0]
        scale = math.isqrt(affinity_outputs)
        if scale * scale != affinity_outputs:
            raise ValueError(
                f"reference checkpoint {source}: decode_head.acm_modules.{index}.gla.weight has "
                f"{affinity_outputs} output channels, not a square s*s"
            )
        pool_scales.append(scale)
    return {
        "num_classes": state_dict["decode_head.conv_seg.weight"].shape[0],
        "backbone": _BACKBONE_BY_STAGE3_BLOCKS[stage3_blocks],
        "pool_scales": pool_scales,
        "gla": any(".global_info." in key for key in state_dict),
        "fusion": any(".fusion_conv." in key for key in state_dict),
        "aux": any(key.startswith("auxiliary_head.") for key in state_dict),
        "channels": state_dict["decode_head.bottleneck.conv.weight"].shape[0],
    }


def from_mmseg(checkpoint: str | Path | Mapping[str, Any]) -> APCNet:
    """Build an APCNet (eval mode) holding the weights of a reference-toolbox APCNet checkpoint.

    checkpoint: a path to the torch file, a loaded checkpoint dict with "state_dict", or a
    bare state_dict. Depth (50/101), number of classes, pool scales (in module order), GLA,
    fusion, auxiliary head and head width are read from the keys and shapes. Inputs must be
    normalised with `MMSEG_MEAN` / `MMSEG_STD` (RGB, 0-255 values); output stride is 8.
    Raises ValueError listing missing and unexpected keys when the layout does not match.
    """
    source = repr(str(checkpoint)) if isinstance(checkpoint, str | Path) else "(in memory)"
    in_memory = not isinstance(checkpoint, str | Path)
    state_dict = _read_state_dict(checkpoint, source)
    # Built on the meta device: random initialisation would be overwritten anyway.
    with torch.device("meta"):
        model = APCNet(**infer_arguments(state_dict, source))
    mapped = {
        # Clone caller-owned tensors so the model does not share storage with them.
        reference_key_to_apcnet(key): value.clone() if in_memory else value
        for key, value in state_dict.items()
    }
    expected = set(model.state_dict())
    missing = sorted(apcnet_key_to_reference(key) for key in expected - set(mapped))
    unexpected = sorted(apcnet_key_to_reference(key) for key in set(mapped) - expected)
    if missing or unexpected:
        raise ValueError(
            f"reference checkpoint {source} does not match the APCNet layout it implies "
            f"({model.arguments}): missing keys {missing}, unexpected keys {unexpected}"
        )
    model.load_state_dict(mapped, assign=True)
    return model.eval()
