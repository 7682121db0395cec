"""Specification of apcnet.metrics: summed intersection/union counts and the scores from them."""

import math

import pytest
import torch

from apcnet.metrics import MeanIoU, SegmentationScores, confusion_matrix, intersection_union

# A hand-checked 3-class example (one image, 2 x 4 pixels, one ignored pixel):
#   target  0 0 1 1      pred  0 1 1 1
#           2 2 255 1          2 0 0 1
# labelled pixels: 7; correct: (0,0) (0,2) (0,3) (1,0) (1,3) = 5
# class 0: I=1, pred area=2 (ignored pixel not counted), label area=2 -> U=3
# class 1: I=3, pred area=4, label area=3 -> U=4
# class 2: I=1, pred area=1, label area=2 -> U=2
HAND_TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
HAND_PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 1]]])


def _random_batch(seed: int, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (4, 9, 7), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = 255
    pred = torch.randint(0, classes, (4, 9, 7), generator=generator)
    return pred, target


def test_intersection_union_counts_a_hand_computed_example():
    intersection, union, label_area = intersection_union(HAND_PRED, HAND_TARGET, 3, 255)
    assert intersection.tolist() == [1, 3, 1]
    assert union.tolist() == [3, 4, 2]
    assert label_area.tolist() == [2, 3, 2]
    assert intersection.dtype == union.dtype == label_area.dtype == torch.int64


def test_scores_of_the_hand_computed_example():
    metric = MeanIoU(num_classes=3)
    metric.update(HAND_PRED, HAND_TARGET)
    scores = metric.compute()
    assert isinstance(scores, SegmentationScores)
    assert scores.per_class_iou == pytest.approx((1 / 3, 0.75, 0.5))
    assert scores.miou == pytest.approx((1 / 3 + 0.75 + 0.5) / 3)
    assert scores.pixel_accuracy == pytest.approx(5 / 7)
    assert scores.per_class_accuracy == pytest.approx((0.5, 1.0, 0.5))


def test_ignored_pixels_count_for_nothing_whatever_is_predicted_there():
    pred = HAND_PRED.clone()
    pred[0, 1, 2] = 2  # the ignored pixel
    assert torch.equal(
        torch.stack(intersection_union(pred, HAND_TARGET, 3, 255)),
        torch.stack(intersection_union(HAND_PRED, HAND_TARGET, 3, 255)),
    )


def test_classes_absent_from_prediction_and_target_are_excluded_from_the_mean():
    metric = MeanIoU(num_classes=5)
    metric.update(HAND_PRED, HAND_TARGET)
    scores = metric.compute()
    assert math.isnan(scores.per_class_iou[3]) and math.isnan(scores.per_class_iou[4])
    assert scores.miou == pytest.approx((1 / 3 + 0.75 + 0.5) / 3)


def test_a_class_predicted_but_never_labelled_counts_with_iou_zero():
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    pred = torch.tensor([[[0, 0], [0, 1]]])
    metric = MeanIoU(num_classes=2)
    metric.update(pred, target)
    scores = metric.compute()
    assert scores.per_class_iou == pytest.approx((0.75, 0.0))
    assert scores.miou == pytest.approx(0.375)


def test_counts_summed_over_the_data_set_not_averaged_per_batch():
    metric = MeanIoU(num_classes=2)
    metric.update(torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]]))
    metric.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    # Summed: class 0 I=3, U=4; class 1 I=1, U=2 -> (0.75 + 0.5) / 2 = 0.625. Averaging the
    # per-batch mIoUs would give (0.375 + 1.0) / 2 = 0.6875.
    assert metric.compute().miou == pytest.approx(0.625)


def test_merging_two_halves_equals_one_pass():
    pred, target = _random_batch(seed=1)
    whole = MeanIoU(num_classes=5)
    whole.update(pred, target)
    first, second = MeanIoU(num_classes=5), MeanIoU(num_classes=5)
    first.update(pred[:2], target[:2])
    second.update(pred[2:], target[2:])
    merged = first.merge(second)
    assert merged is first
    assert torch.equal(merged.counts(), whole.counts())
    assert merged.compute() == whole.compute()


def test_from_counts_round_trips():
    pred, target = _random_batch(seed=2)
    metric = MeanIoU(num_classes=5)
    metric.update(pred, target)
    rebuilt = MeanIoU.from_counts(metric.counts())
    assert torch.equal(rebuilt.counts(), metric.counts())
    assert rebuilt.compute() == metric.compute()


def test_counts_are_int64_with_rows_intersection_union_label_area():
    metric = MeanIoU(num_classes=3)
    metric.update(HAND_PRED, HAND_TARGET)
    counts = metric.counts()
    assert counts.dtype == torch.int64 and counts.shape == (3, 3)
    assert counts.tolist() == [[1, 3, 1], [3, 4, 2], [2, 3, 2]]


def test_summed_counts_of_two_evaluators_equal_one_evaluator_over_both():
    pred, target = _random_batch(seed=3)
    first, second, whole = MeanIoU(5), MeanIoU(5), MeanIoU(5)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    whole.update(pred, target)
    assert MeanIoU.from_counts(first.counts() + second.counts()).compute() == whole.compute()


def test_reset_forgets_accumulated_counts():
    metric = MeanIoU(num_classes=3)
    metric.update(HAND_PRED, HAND_TARGET)
    metric.reset()
    assert metric.counts().sum().item() == 0


def test_no_labelled_pixel_gives_nan_scores():
    metric = MeanIoU(num_classes=3)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    scores = metric.compute()
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)


def test_scores_are_fractions_between_zero_and_one():
    pred, target = _random_batch(seed=4)
    metric = MeanIoU(num_classes=5)
    metric.update(pred, target)
    scores = metric.compute()
    for value in (scores.miou, scores.pixel_accuracy, *scores.per_class_iou):
        assert 0.0 <= value <= 1.0


def test_shape_mismatch_is_a_clear_error_suggesting_argmax_for_logits():
    metric = MeanIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"argmax\(dim=1\)"):
        metric.update(torch.zeros(1, 3, 2, 4, dtype=torch.long), HAND_TARGET)


def test_out_of_range_predictions_are_a_clear_error():
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 2\].*to 3"):
        MeanIoU(num_classes=3).update(torch.full((1, 2, 4), 3), HAND_TARGET)


def test_out_of_range_labels_are_a_clear_error():
    target = HAND_TARGET.clone()
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match="target labels must lie"):
        MeanIoU(num_classes=3).update(HAND_PRED, target)


def test_float_predictions_are_rejected():
    with pytest.raises(TypeError, match="integer class indices"):
        MeanIoU(num_classes=3).update(HAND_PRED.float(), HAND_TARGET)


def test_merging_evaluators_of_different_class_counts_is_refused():
    with pytest.raises(ValueError, match="num_classes=4"):
        MeanIoU(num_classes=3).merge(MeanIoU(num_classes=4))


def test_intersection_union_agrees_with_per_class_boolean_counting():
    pred, target = _random_batch(seed=5, classes=6)
    intersection, union, label_area = intersection_union(pred, target, 6, 255)
    labelled = target != 255
    for c in range(6):
        predicted, actual = (pred == c) & labelled, target == c
        assert intersection[c] == (predicted & actual).sum()
        assert union[c] == (predicted | actual).sum()
        assert label_area[c] == actual.sum()


def test_confusion_matrix_counts_each_labelled_pixel_at_its_label_row_and_prediction_column():
    pred, target = _random_batch(seed=7, classes=4)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for label, predicted in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if label != 255:
            expected[label, predicted] += 1
    confusion = confusion_matrix(pred, target, 4, 255)
    assert confusion.dtype == torch.int64
    assert torch.equal(confusion, expected)
    assert confusion.sum() == (target != 255).sum() > 0


def test_uint8_label_maps_are_accepted():
    counts = intersection_union(HAND_PRED.to(torch.uint8), HAND_TARGET.to(torch.uint8), 3, 255)
    assert [c.tolist() for c in counts] == [[1, 3, 1], [3, 4, 2], [2, 3, 2]]
