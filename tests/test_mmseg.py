"""from_mmseg: reference-toolbox APCNet checkpoints give the reference logits."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.reference_checkpoint import StateDict, reference_state_dict

import apcnet
from apcnet.mmseg import apcnet_key_to_reference, infer_arguments


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids oversubscription
    (measured 10x faster under load). Restored after this module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def reference_r50() -> StateDict:
    return reference_state_dict(num_classes=5, backbone="resnet50_v1c")


# ---- an independent forward pass of the reference network, from plain functional ops ----


def _bn(x: torch.Tensor, sd: StateDict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _conv_module(x: torch.Tensor, sd: StateDict, prefix: str, padding: int = 0) -> torch.Tensor:
    return F.relu(
        _bn(F.conv2d(x, sd[f"{prefix}.conv.weight"], padding=padding), sd, f"{prefix}.bn")
    )


def _bottleneck(x, sd, prefix, stride, dilation):
    out = F.relu(_bn(F.conv2d(x, sd[f"{prefix}.conv1.weight"]), sd, f"{prefix}.bn1"))
    out = F.conv2d(
        out, sd[f"{prefix}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation
    )
    out = F.relu(_bn(out, sd, f"{prefix}.bn2"))
    out = _bn(F.conv2d(out, sd[f"{prefix}.conv3.weight"]), sd, f"{prefix}.bn3")
    identity = x
    if f"{prefix}.downsample.0.weight" in sd:
        identity = F.conv2d(x, sd[f"{prefix}.downsample.0.weight"], stride=stride)
        identity = _bn(identity, sd, f"{prefix}.downsample.1")
    return F.relu(out + identity)


def _reference_backbone(x, sd):
    for conv, norm, stride in ((0, 1, 2), (3, 4, 1), (6, 7, 1)):
        x = F.conv2d(x, sd[f"backbone.stem.{conv}.weight"], stride=stride, padding=1)
        x = F.relu(_bn(x, sd, f"backbone.stem.{norm}"))
    x = F.max_pool2d(x, 3, 2, 1)
    # Output stride 8: (stride, dilation) per stage; a dilated stage's first block uses half.
    stages = {1: (1, 1, 3), 2: (2, 1, 4), 3: (1, 2, 6), 4: (1, 4, 3)}
    outputs = {}
    for stage, (stride, dilation, blocks) in stages.items():
        for block in range(blocks):
            first = block == 0
            x = _bottleneck(
                x,
                sd,
                f"backbone.layer{stage}.{block}",
                stride if first else 1,
                max(dilation // 2, 1) if first else dilation,
            )
        outputs[stage] = x
    return outputs[3], outputs[4]


def _reference_acm(x, sd, prefix, scale):
    batch, _, height, width = x.shape
    pooled = _conv_module(F.adaptive_avg_pool2d(x, scale), sd, f"{prefix}.pooled_redu_conv")
    local = _conv_module(x, sd, f"{prefix}.input_redu_conv")
    channels = local.shape[1]
    global_vector = _conv_module(F.adaptive_avg_pool2d(local, 1), sd, f"{prefix}.global_info")
    global_map = F.interpolate(
        global_vector, size=(height, width), mode="bilinear", align_corners=False
    )
    affinity = F.conv2d(local + global_map, sd[f"{prefix}.gla.weight"], sd[f"{prefix}.gla.bias"])
    affinity = torch.sigmoid(affinity).reshape(batch, scale * scale, -1).permute(0, 2, 1)
    regions = pooled.reshape(batch, channels, -1).permute(0, 2, 1)
    z = torch.matmul(affinity, regions).permute(0, 2, 1).reshape(batch, channels, height, width)
    z = F.relu(_conv_module(z, sd, f"{prefix}.residual_conv") + local)
    return _conv_module(z, sd, f"{prefix}.fusion_conv")


def _reference_forward(images, sd, pool_scales=(1, 2, 3, 6)):
    stage3, stage4 = _reference_backbone(images, sd)
    pyramid = [stage4] + [
        _reference_acm(stage4, sd, f"decode_head.acm_modules.{i}", s)
        for i, s in enumerate(pool_scales)
    ]
    fused = _conv_module(torch.cat(pyramid, 1), sd, "decode_head.bottleneck", padding=1)
    logits = F.conv2d(fused, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    aux = _conv_module(stage3, sd, "auxiliary_head.convs.0", padding=1)
    aux = F.conv2d(aux, sd["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.bias"])
    size = images.shape[-2:]
    return (
        F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
        F.interpolate(aux, size=size, mode="bilinear", align_corners=False),
    )


# ---- tests ----


def test_from_mmseg_checkpoint_file_gives_reference_logits(reference_r50, tmp_path: Path):
    path = tmp_path / "apcnet_r50.pth"
    torch.save({"meta": {"CLASSES": ["a", "b", "c", "d", "e"]}, "state_dict": reference_r50}, path)
    model = apcnet.from_mmseg(path)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        result = model(images)
        expected_out, expected_aux = _reference_forward(images, reference_r50)
    scale = expected_out.abs().max().item()
    torch.testing.assert_close(result["out"], expected_out, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(result["aux"], expected_aux, rtol=1e-4, atol=1e-4 * scale)


def test_from_mmseg_returns_eval_mode_model_on_cpu(reference_r50):
    model = apcnet.from_mmseg(reference_r50)
    assert not model.training
    assert {tensor.device.type for tensor in model.state_dict().values()} == {"cpu"}


def test_from_mmseg_accepts_checkpoint_dict_and_bare_state_dict(reference_r50):
    from_dict = apcnet.from_mmseg({"state_dict": reference_r50})
    from_bare = apcnet.from_mmseg(reference_r50)
    key = "decode_head.acm_modules.3.gla.weight"
    assert torch.equal(from_dict.state_dict()[key], reference_r50[key])
    assert torch.equal(from_bare.state_dict()[key], reference_r50[key])


def test_from_mmseg_does_not_share_storage_with_an_in_memory_state_dict(reference_r50):
    model = apcnet.from_mmseg(reference_r50)
    key = "decode_head.conv_seg.bias"
    with torch.no_grad():
        model.decode_head.conv_seg.bias.add_(1.0)
    assert not torch.equal(model.state_dict()[key], reference_r50[key])


def test_from_mmseg_parameters_are_trainable(reference_r50):
    model = apcnet.from_mmseg(reference_r50)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_from_mmseg_infers_default_architecture(reference_r50):
    arguments = apcnet.from_mmseg(reference_r50).arguments
    assert arguments["backbone"] == "resnet50_v1c"
    assert arguments["num_classes"] == 5
    assert arguments["pool_scales"] == [1, 2, 3, 6]
    assert arguments["fusion"] and arguments["aux"] and arguments["gla"]


def test_from_mmseg_infers_scales_in_module_order_fusion_and_aux():
    state_dict = reference_state_dict(
        num_classes=3, backbone="resnet50_v1c", pool_scales=(3, 1), fusion=False, aux=False
    )
    arguments = apcnet.from_mmseg(state_dict).arguments
    assert arguments["pool_scales"] == [3, 1]
    assert arguments["fusion"] is False
    assert arguments["aux"] is False


def test_infer_arguments_reads_resnet101_and_150_classes_from_layer3_and_classifier():
    with torch.device("meta"):
        model = apcnet.APCNet(150, backbone="resnet101_v1c")
    state_dict = {apcnet_key_to_reference(k): v for k, v in model.state_dict().items()}
    arguments = infer_arguments(state_dict, "test")
    assert arguments["backbone"] == "resnet101_v1c"
    assert arguments["num_classes"] == 150


def test_from_mmseg_lists_missing_keys(reference_r50):
    broken = dict(reference_r50)
    del broken["decode_head.acm_modules.0.residual_conv.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['decode_head\.acm_modules\.0\.residual"):
        apcnet.from_mmseg(broken)


def test_from_mmseg_lists_unexpected_keys(reference_r50):
    broken = dict(reference_r50)
    broken["decode_head.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['decode_head\.extra_conv\.weight'\]"):
        apcnet.from_mmseg(broken)


def test_from_mmseg_rejects_a_checkpoint_without_deep_stem():
    with pytest.raises(ValueError, match="stem"):
        apcnet.from_mmseg({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}})


def test_mmseg_normalisation_constants_are_rgb_0_255():
    assert apcnet.MMSEG_MEAN == (123.675, 116.28, 103.53)
    assert apcnet.MMSEG_STD == (58.395, 57.12, 57.375)


class _UntrustedObject:
    """Something safe loading (weights_only=True) refuses to unpickle."""


def test_checkpoint_with_objects_that_safe_loading_refuses_gets_an_extraction_hint(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"meta": _UntrustedObject(), "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"weights_only=False\)\['state_dict'\]"):
        apcnet.from_mmseg(path)


@pytest.mark.parametrize(
    "content", [b"not a checkpoint\n", b"PK\x03\x04 cut short"], ids=["text", "truncated-zip"]
)
def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error_naming_it(content, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"notes\.pth") as raised:
        apcnet.from_mmseg(path)
    assert "\n" not in str(raised.value)
