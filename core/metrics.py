"""Segmentation metrics, computed one way everywhere (training, export gate, frame-level eval).

Mean IoU follows Keras `MeanIoU(ignore_class=0)` semantics for the pixels it counts (pixels whose ground
truth is background are ignored) and averages over the terrain classes 1..4 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from marsseg.core.spec import BACKGROUND, CLASS_NAMES, NUM_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts[t, p] over all pixels, including background truth (rows 0 are dropped by the scores)."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} != y_pred shape {y_pred.shape}")
    t = y_true.astype(np.int64, copy=False).ravel()
    p = y_pred.astype(np.int64, copy=False).ravel()
    if t.size and (t.max() >= num_classes or p.max() >= num_classes or t.min() < 0 or p.min() < 0):
        raise ValueError(f"class ids must be in [0, {num_classes - 1}]")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    mean_iou: float  # over classes present (truth or prediction) among 1..num_classes-1
    per_class_iou: dict[str, float]  # nan where a class is absent from both truth and prediction
    pixel_accuracy: float  # on labelled (non-background) pixels

    def as_dict(self) -> dict:
        return {
            "mean_iou": self.mean_iou,
            "per_class_iou": self.per_class_iou,
            "pixel_accuracy": self.pixel_accuracy,
        }


def scores(cm: np.ndarray, names: tuple[str, ...] = CLASS_NAMES) -> Scores:
    """IoU per terrain class and their mean, from a confusion matrix, ignoring background-truth pixels."""
    cm = np.asarray(cm, dtype=np.float64).copy()
    cm[BACKGROUND, :] = 0  # ignore pixels whose truth is background
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    terrain = [c for c in range(cm.shape[0]) if c != BACKGROUND]
    valid = [iou[c] for c in terrain if not np.isnan(iou[c])]
    labelled = cm.sum()
    return Scores(
        mean_iou=float(np.mean(valid)) if valid else float("nan"),
        per_class_iou={names[c]: float(iou[c]) for c in terrain},
        pixel_accuracy=float(tp.sum() / labelled) if labelled else float("nan"),
    )
