"""APCNet: output contract, reference parameter counts, ablations, precision and memory formats."""

import json

import pytest
import torch

from apcnet import APCNet, SingleValueSafeBatchNorm2d, count_parameters


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids oversubscription
    (measured 10x faster under load). Restored after this module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _small_model(**arguments) -> APCNet:
    torch.manual_seed(0)
    return APCNet(num_classes=arguments.pop("num_classes", 4), backbone="resnet18", **arguments)


@pytest.fixture(scope="module")
def small_model() -> APCNet:
    return _small_model().eval()


@pytest.fixture(scope="module")
def r50_c21() -> APCNet:
    with torch.device("meta"):
        return APCNet(21)


@pytest.fixture(scope="module")
def r101_c150() -> APCNet:
    with torch.device("meta"):
        return APCNet(150, backbone="resnet101_v1c")


def _images(batch: int = 2, height: int = 65, width: int = 97) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(3))


# ---- output contract ----


def test_eval_output_has_out_and_aux_at_odd_input_size(small_model):
    with torch.no_grad():
        result = small_model(_images())
    assert result["out"].shape == (2, 4, 65, 97)
    assert result["aux"].shape == (2, 4, 65, 97)


def test_train_output_has_out_and_aux_at_odd_input_size():
    result = _small_model().train()(_images())
    assert result["out"].shape == (2, 4, 65, 97)
    assert result["aux"].shape == (2, 4, 65, 97)


def test_output_has_no_aux_when_aux_head_is_off():
    model = _small_model(aux=False).eval()
    with torch.no_grad():
        result = model(_images(1, 33, 33))
    assert set(result) == {"out"}
    assert model.aux_head is None


def test_output_stride_16_keeps_output_size_and_halves_feature_size():
    model = _small_model(output_stride=16).eval()
    with torch.no_grad():
        features = model.backbone(_images(1, 64, 96))
        result = model(_images(1, 65, 97))
    assert features.stage4.shape[-2:] == (4, 6)
    assert features.stage3.shape[-2:] == (4, 6)
    assert result["out"].shape == (1, 4, 65, 97)


def test_output_stride_8_features_are_an_eighth_of_the_input(small_model):
    with torch.no_grad():
        features = small_model.backbone(_images(1, 64, 96))
    assert features.stage4.shape[-2:] == (8, 12)


def test_unsupported_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        _small_model(output_stride=32)


def test_unknown_backbone_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="resnet50_v1c"):
        APCNet(3, backbone="vgg16")


def test_arguments_rebuild_the_same_architecture_after_a_json_round_trip():
    model = _small_model(pool_scales=(1, 3), gla=False, fusion=False, output_stride=16)
    arguments = json.loads(json.dumps(model.arguments))
    rebuilt = APCNet(**arguments)
    assert rebuilt.arguments == model.arguments
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_arguments_leave_out_pretrained_backbone(small_model):
    assert "pretrained_backbone" not in small_model.arguments


# ---- reference parameter counts (REFERENCE.md) ----


def test_resnet50_v1c_c21_parameter_counts_match_reference(r50_c21):
    assert count_parameters(r50_c21.backbone) == 23_527_264
    assert count_parameters(r50_c21.decode_head) == 30_466_631
    assert count_parameters(r50_c21.aux_head) == 2_365_205
    assert count_parameters(r50_c21) == 56_359_100
    assert count_parameters(r50_c21) - count_parameters(r50_c21.aux_head) == 53_993_895


def test_resnet101_v1c_c150_parameter_counts_match_reference(r101_c150):
    assert count_parameters(r101_c150.backbone) == 42_519_392
    assert count_parameters(r101_c150.decode_head) == 30_532_808
    assert count_parameters(r101_c150.aux_head) == 2_398_358
    assert count_parameters(r101_c150) == 75_450_558
    assert count_parameters(r101_c150) - count_parameters(r101_c150.aux_head) == 73_052_200


def test_each_context_module_has_the_reference_parameter_count(r50_c21):
    counts = [count_parameters(acm) for acm in r50_c21.decode_head.acm_modules]
    assert counts == [2_888_704 + 513 * s * s for s in (1, 2, 3, 6)]


def test_head_without_fusion_conv_matches_reference_count():
    with torch.device("meta"):
        model = APCNet(21, fusion=False, aux=False)
    assert count_parameters(model.decode_head) == 29_413_959


def test_resnet18_head_widths_follow_the_width_rule(small_model):
    assert small_model.decode_head.bottleneck.conv.out_channels == 128  # 512 * 512 / 2048
    assert small_model.aux_head.convs[0].conv.out_channels == 64  # 256 // 4


# ---- ablations ----


def test_gla_off_has_no_global_info_conv_and_changes_the_output(small_model):
    without_gla = _small_model(gla=False).eval()
    assert all(acm.global_info is None for acm in without_gla.decode_head.acm_modules)
    # Same weights everywhere except the global_info convs that only GLA has.
    without_gla.load_state_dict(small_model.state_dict(), strict=False)
    images = _images(1, 48, 48)
    with torch.no_grad():
        assert not torch.allclose(small_model(images)["out"], without_gla(images)["out"])


def test_empty_pool_scales_is_the_dilated_fcn_baseline():
    model = _small_model(pool_scales=()).eval()
    assert len(model.decode_head.acm_modules) == 0
    assert model.decode_head.bottleneck.conv.in_channels == model.backbone.stage4_channels
    with torch.no_grad():
        assert model(_images(1, 33, 33))["out"].shape == (1, 4, 33, 33)


def test_custom_pool_scales_build_one_context_module_per_scale_in_order():
    model = _small_model(pool_scales=(2, 5, 32)).eval()
    assert [acm.gla.out_channels for acm in model.decode_head.acm_modules] == [4, 25, 1024]
    with torch.no_grad():
        assert model(_images(1, 40, 40))["out"].shape == (1, 4, 40, 40)


# ---- batch of one in train mode ----


def test_batch_of_one_trains_forward_and_backward():
    model = _small_model().train()
    result = model(_images(1, 49, 49))
    (result["out"].mean() + 0.4 * result["aux"].mean()).backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(gradients) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in gradients)


def test_batch_of_one_leaves_single_value_running_statistics_untouched():
    model = _small_model().train()
    acm = model.decode_head.acm_modules[0]  # scale 1: one pooled value per image
    before = acm.pooled_redu_conv.bn.running_mean.clone()
    global_before = acm.global_info.bn.running_var.clone()
    model(_images(1, 49, 49))
    assert torch.equal(acm.pooled_redu_conv.bn.running_mean, before)
    assert torch.equal(acm.global_info.bn.running_var, global_before)


def test_single_value_batchnorm_uses_batch_statistics_with_more_than_one_value():
    norm = SingleValueSafeBatchNorm2d(3).train()
    reference = torch.nn.BatchNorm2d(3).train()
    values = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(norm(values), reference(values))
    torch.testing.assert_close(norm.running_mean, reference.running_mean)


def test_single_value_batchnorm_converts_to_sync_batchnorm_with_the_same_keys():
    model = _small_model()
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_small_model())
    acm = converted.decode_head.acm_modules[0]
    assert isinstance(acm.pooled_redu_conv.bn, torch.nn.SyncBatchNorm)
    assert isinstance(acm.global_info.bn, torch.nn.SyncBatchNorm)
    assert converted.state_dict().keys() == model.state_dict().keys()


# ---- precision and memory format (CPU) ----


def test_bfloat16_autocast_forward_is_finite_and_close_to_float32(small_model):
    images = _images(1, 64, 64)
    with torch.no_grad():
        reference = small_model(images)["out"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = small_model(images)["out"].float()
    assert torch.isfinite(low_precision).all()
    error = (low_precision - reference).abs().max() / reference.abs().max()
    assert error < 0.1


def test_channels_last_forward_matches_contiguous(small_model):
    images = _images(1, 64, 64)
    with torch.no_grad():
        reference = small_model(images)["out"]
        channels_last = _small_model().eval().to(memory_format=torch.channels_last)
        result = channels_last(images.to(memory_format=torch.channels_last))["out"]
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)
