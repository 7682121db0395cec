"""Reference-toolbox (MMSegmentation) layout state dicts for tests: a random APCNet's weights
under the reference keys, with BatchNorm statistics and biases that make a wrong mapping show."""

import torch

import apcnet
from apcnet.mmseg import apcnet_key_to_reference

StateDict = dict[str, torch.Tensor]


def randomise_batchnorms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters, so a wrong BN mapping shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def reference_state_dict(**arguments) -> StateDict:
    """A random APCNet's weights renamed to the reference toolbox's keys."""
    torch.manual_seed(0)
    model = apcnet.APCNet(**arguments)
    with torch.no_grad():
        randomise_batchnorms(model, torch.Generator().manual_seed(1))
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
    return {apcnet_key_to_reference(key): value for key, value in model.state_dict().items()}
