"""Specification of apcnet.loss.segmentation_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from apcnet.loss import segmentation_loss


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = torch.randn(2, 4, 6, 5, generator=generator)
    aux = torch.randn(2, 4, 6, 5, generator=generator)
    target = torch.randint(0, 4, (2, 6, 5), generator=generator)
    return out, aux, target


def test_main_loss_alone_is_cross_entropy_over_labelled_pixels():
    out, _, target = _batch()
    target[0, :2] = 255
    expected = F.cross_entropy(out, target, ignore_index=255)
    assert torch.allclose(segmentation_loss({"out": out}, target), expected)


def test_aux_loss_is_added_with_its_weight():
    out, aux, target = _batch()
    expected = F.cross_entropy(out, target) + 0.4 * F.cross_entropy(aux, target)
    assert torch.allclose(segmentation_loss({"out": out, "aux": aux}, target), expected)


def test_aux_weight_is_configurable():
    out, aux, target = _batch()
    expected = F.cross_entropy(out, target) + 1.5 * F.cross_entropy(aux, target)
    loss = segmentation_loss({"out": out, "aux": aux}, target, aux_weight=1.5)
    assert torch.allclose(loss, expected)


def test_all_ignored_batch_gives_zero_loss_and_zero_gradients():
    out, aux, target = _batch()
    out.requires_grad_(True)
    target.fill_(255)
    loss = segmentation_loss({"out": out, "aux": aux}, target)
    loss.backward()
    assert loss.item() == 0.0
    assert not math.isnan(loss.item())
    assert torch.equal(out.grad, torch.zeros_like(out))


def test_custom_ignore_index_is_honoured():
    out, _, target = _batch()
    target[:, 0] = 3
    expected = F.cross_entropy(out, target, ignore_index=3)
    assert torch.allclose(segmentation_loss({"out": out}, target, ignore_index=3), expected)


def test_smaller_logits_are_upsampled_bilinearly_to_the_label_size():
    _, _, target = _batch()
    small = torch.randn(2, 4, 3, 3)
    upsampled = F.interpolate(small, size=(6, 5), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, target)
    assert torch.allclose(segmentation_loss({"out": small}, target), expected)


def test_missing_out_key_is_a_clear_error():
    _, aux, target = _batch()
    with pytest.raises(KeyError, match="'out'"):
        segmentation_loss({"aux": aux}, target)


def test_mismatched_batch_sizes_are_a_clear_error():
    out, _, target = _batch()
    with pytest.raises(ValueError, match="batch sizes differ"):
        segmentation_loss({"out": out}, target[:1])
