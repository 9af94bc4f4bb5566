import numpy as np
import pytest
from marsseg.core.metrics import confusion_matrix, scores


def test_hand_computed_iou():
    y = np.array([[1, 1, 2, 2], [3, 4, 0, 0]])
    p = np.array([[1, 2, 2, 2], [3, 1, 4, 1]])
    cm = confusion_matrix(y, p)
    s = scores(cm)
    # soil: tp 1, fp 1 (the big rock pixel), fn 1 -> 1/3; bedrock: tp 2, fp 1 -> 2/3; sand 1/1; big rock 0/1
    assert s.per_class_iou["soil"] == pytest.approx(1 / 3)
    assert s.per_class_iou["bedrock"] == pytest.approx(2 / 3)
    assert s.per_class_iou["sand"] == pytest.approx(1.0)
    assert s.per_class_iou["big_rock"] == pytest.approx(0.0)
    assert s.mean_iou == pytest.approx((1 / 3 + 2 / 3 + 1 + 0) / 4)
    assert s.pixel_accuracy == pytest.approx(4 / 6)  # background-truth pixels are ignored


def test_background_predictions_on_labelled_pixels_count_as_errors():
    y = np.array([1, 1, 1, 1])
    p = np.array([1, 1, 0, 0])
    s = scores(confusion_matrix(y, p))
    assert s.per_class_iou["soil"] == pytest.approx(0.5)
    assert s.mean_iou == pytest.approx(0.5)  # absent classes are left out of the mean, not counted as 0


def test_perfect_and_absent():
    y = np.array([0, 2, 2])
    s = scores(confusion_matrix(y, y))
    assert s.mean_iou == 1.0
    assert np.isnan(s.per_class_iou["soil"])


def test_shape_and_range_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(np.array([7]), np.array([1]))
