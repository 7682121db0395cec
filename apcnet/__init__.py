"""APCNet semantic segmentation in plain PyTorch.

`from apcnet import APCNet` builds the model; `apcnet.from_mmseg` loads reference-toolbox
checkpoints. Loss, metrics, inference and checkpoint I/O live in the submodules
`apcnet.loss`, `apcnet.metrics`, `apcnet.inference`, `apcnet.checkpoint`.
"""

from apcnet.backbone import BACKBONE_NAMES
from apcnet.mmseg import MMSEG_MEAN, MMSEG_STD, from_mmseg
from apcnet.model import APCNet, count_parameters
from apcnet.norm import SingleValueSafeBatchNorm2d

__all__ = [
    "BACKBONE_NAMES",
    "MMSEG_MEAN",
    "MMSEG_STD",
    "APCNet",
    "SingleValueSafeBatchNorm2d",
    "count_parameters",
    "from_mmseg",
]
