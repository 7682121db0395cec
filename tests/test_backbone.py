"""Dilated ResNet backbones: torchvision equivalence, dilation pattern, ImageNet weight loading."""

from pathlib import Path

import pytest
import torch
import torchvision
from helpers.import_probe import modules_imported_by

from apcnet import APCNet
from apcnet.backbone import build_backbone, download_imagenet_weights

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _randomise_batchnorms(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)


def _torchvision_resnet18_file(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_resnet50_with_torchvision_weights_computes_torchvision_dilated_features(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True]
    )
    _randomise_batchnorms(reference)
    reference.eval()
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    backbone = build_backbone("resnet50", 8, str(tmp_path / "resnet50.pth")).eval()
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        stage3 = reference.layer3(reference.layer2(reference.layer1(x)))
        stage4 = reference.layer4(stage3)
        features = backbone(images)
    torch.testing.assert_close(features.stage3, stage3)
    torch.testing.assert_close(features.stage4, stage4)


def test_resnet18_output_stride_8_dilates_stages_3_and_4_with_half_dilation_first():
    backbone = build_backbone("resnet18", 8)
    dilations = [
        (block.conv1.dilation[0], block.conv2.dilation[0])
        for block in (*backbone.layer3, *backbone.layer4)
    ]
    assert dilations == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert backbone.layer3[0].conv1.stride == (1, 1)
    assert backbone.layer4[0].conv1.stride == (1, 1)


def test_resnet18_output_stride_16_dilates_stage_4_only():
    backbone = build_backbone("resnet18", 16)
    assert backbone.layer3[0].conv1.stride == (2, 2)
    assert [block.conv2.dilation[0] for block in backbone.layer4] == [1, 2]


def test_v1c_backbone_has_a_deep_stem_and_stride_on_the_3x3_conv():
    with torch.device("meta"):
        backbone = build_backbone("resnet50_v1c", 8)
    stem_convs = [m for m in backbone.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in stem_convs] == [
        (3, 32, 2),
        (32, 32, 1),
        (32, 64, 1),
    ]
    assert backbone.layer2[0].conv1.stride == (1, 1)
    assert backbone.layer2[0].conv2.stride == (2, 2)


def test_v1c_weights_in_reference_layout_load_from_a_file(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet50_v1c", 8)
    weights = dict(source.state_dict())
    weights["fc.weight"] = torch.zeros(1000, 2048)  # ImageNet files carry the classifier
    torch.save({"state_dict": weights}, tmp_path / "resnet50_v1c.pth")
    torch.manual_seed(1)
    loaded = APCNet(3, pretrained_backbone=str(tmp_path / "resnet50_v1c.pth")).backbone
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_torchvision_layout_weights_load_into_resnet18(tmp_path):
    path = _torchvision_resnet18_file(tmp_path / "resnet18.pth")
    backbone = build_backbone("resnet18", 8, path)
    weights = torch.load(path, weights_only=True)
    assert torch.equal(backbone.stem[0].weight, weights["conv1.weight"])
    assert torch.equal(backbone.stem[1].running_var, weights["bn1.running_var"])
    assert torch.equal(backbone.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file_name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path = _torchvision_resnet18_file(tmp_path / "hub" / "checkpoints" / file_name)
    backbone = build_backbone("resnet18", 8, "imagenet")
    assert torch.equal(backbone.stem[0].weight, torch.load(path, weights_only=True)["conv1.weight"])


def test_failed_imagenet_download_says_how_to_pass_a_local_file(tmp_path):
    # Port 9 on localhost refuses at once: an offline download without touching the network.
    url = "http://127.0.0.1:9/resnet18-f37072fd.pth"
    with pytest.raises(
        RuntimeError, match=r"pretrained_backbone='/path/to/resnet18-f37072fd\.pth'"
    ):
        download_imagenet_weights(url, "resnet18", model_dir=tmp_path)


def test_imagenet_is_refused_for_v1c_backbones_with_a_hint():
    with pytest.raises(ValueError, match="needs a local file"):
        build_backbone("resnet50_v1c", 8, "imagenet")


def test_missing_weights_file_is_reported_by_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_backbone("resnet18", 8, str(tmp_path / "nowhere.pth"))


def test_weights_of_the_wrong_layout_are_refused_with_the_missing_keys(tmp_path):
    path = _torchvision_resnet18_file(tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"missing keys \[.*'layer1\.0\.conv3\.weight'"):
        build_backbone("resnet50", 8, path)


def test_building_a_model_does_not_import_torchvision():
    """torchvision costs about a second of CPU in every process that builds the model."""
    program = "from apcnet import APCNet\nAPCNet(num_classes=3, backbone='resnet50_v1c')"
    assert modules_imported_by(program, ["torchvision"]) == []
