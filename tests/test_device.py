"""The device features a training worker resolves from the config: GPU-only features stay off
on CPU workers, and one that cannot run on a CPU is refused before training starts."""

import pytest
import torch

from pipeline.config.schema import ConfigError, load_config
from pipeline.train.device import device_features

CPU = torch.device("cpu")


@pytest.mark.parametrize("world_size", [1, 2])
def test_auto_switches_mixed_precision_channels_last_and_sync_batchnorm_off_on_cpu(world_size):
    config = load_config(None, ["scaling.num_workers=2"])
    features = device_features(config.scaling, CPU, world_size)
    assert features.autocast_dtype is None
    assert not features.channels_last
    assert not features.sync_batchnorm


def test_sync_batchnorm_true_on_cpu_workers_is_refused_naming_the_keys():
    with pytest.raises(ConfigError, match=r"scaling\.sync_batchnorm is true but scaling\.use_gpu"):
        load_config(None, ["scaling.sync_batchnorm=true"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_switches_bf16_channels_last_and_sync_batchnorm_on_with_several_gpu_workers():
    config = load_config(None, ["scaling.use_gpu=true", "scaling.num_workers=2"])
    features = device_features(config.scaling, torch.device("cuda", 0), world_size=2)
    assert features.autocast_dtype in (torch.bfloat16, torch.float16)
    assert features.channels_last and features.sync_batchnorm
