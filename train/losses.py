"""Class-weighted segmentation losses in `keras.ops` (backend-agnostic: TensorFlow or JAX).

All take sparse integer labels (B, H, W) and softmax probabilities (B, H, W, C). A class weight of 0 (the
default for background) removes those pixels from the loss entirely.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from keras import ops

EPS = 1e-7


def _prep(y_true, y_pred, num_classes: int):
    labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    onehot = ops.one_hot(labels, num_classes)
    probs = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0 - EPS)
    return onehot, probs


def weighted_ce(weights: np.ndarray) -> Callable:
    """Cross-entropy where each pixel counts with its true class's weight, normalised by the summed weight."""
    w = ops.convert_to_tensor(np.asarray(weights, np.float32))
    c = len(weights)

    def loss(y_true, y_pred):
        onehot, probs = _prep(y_true, y_pred, c)
        pw = ops.sum(onehot * w, axis=-1)
        ce = -ops.sum(onehot * ops.log(probs), axis=-1)
        return ops.sum(pw * ce) / (ops.sum(pw) + EPS)

    return loss


def weighted_focal(weights: np.ndarray, gamma: float) -> Callable:
    """Focal loss (Lin et al.), class-weighted; down-weights pixels the model already gets right."""
    w = ops.convert_to_tensor(np.asarray(weights, np.float32))
    c = len(weights)

    def loss(y_true, y_pred):
        onehot, probs = _prep(y_true, y_pred, c)
        pw = ops.sum(onehot * w, axis=-1)
        pt = ops.sum(onehot * probs, axis=-1)
        fl = -ops.power(1.0 - pt, gamma) * ops.log(pt)
        return ops.sum(pw * fl) / (ops.sum(pw) + EPS)

    return loss


def weighted_dice(weights: np.ndarray) -> Callable:
    """Soft Dice over the batch, per class weighted: 1 - 2 sum(w y p) / sum(w (y + p)).

    Pixels whose true class has weight 0 are masked out of both sums so they neither help nor hurt.
    """
    w = ops.convert_to_tensor(np.asarray(weights, np.float32))
    c = len(weights)

    def loss(y_true, y_pred):
        onehot, probs = _prep(y_true, y_pred, c)
        valid = ops.expand_dims(ops.cast(ops.sum(onehot * w, axis=-1) > 0, "float32"), -1)
        inter = ops.sum(onehot * probs * valid, axis=(0, 1, 2))
        total = ops.sum((onehot + probs) * valid, axis=(0, 1, 2))
        return 1.0 - 2.0 * ops.sum(w * inter) / (ops.sum(w * total) + EPS)

    return loss


def lovasz_softmax(weights: np.ndarray) -> Callable:
    """Lovász-softmax (Berman et al., CVPR 2018): the convex extension of each class's Jaccard loss, over the batch.

    Cross-entropy and Dice reward pixels; the score is a per-class intersection over union over all frames, whose
    rare-class terms a few pixels swing. This optimises that quantity's tight surrogate: per class, the pixels'
    errors |y - p| sorted worst first, weighted by how much each would change the class's Jaccard loss. Classes
    absent from the batch or with weight 0 (background) are left out; masked pixels get error 0 and weigh nothing.
    """
    keep = [k for k, wk in enumerate(np.asarray(weights)) if wk > 0]
    w = ops.convert_to_tensor(np.asarray(weights, np.float32))
    c = len(weights)

    def loss(y_true, y_pred):
        onehot, probs = _prep(y_true, y_pred, c)
        valid = ops.reshape(ops.cast(ops.sum(onehot * w, axis=-1) > 0, "float32"), (-1,))
        onehot, probs = ops.reshape(onehot, (-1, c)), ops.reshape(probs, (-1, c))
        total, present = 0.0, 0.0
        for k in keep:
            fg = onehot[:, k]  # class k has weight > 0: its pixels are all valid
            errors = ops.abs(fg - probs[:, k]) * valid
            order = ops.argsort(-ops.stop_gradient(errors))
            fg_sorted = ops.take(fg, order)
            gts = ops.sum(fg_sorted)
            intersection = gts - ops.cumsum(fg_sorted)
            union = gts + ops.cumsum(1.0 - fg_sorted)
            jaccard = 1.0 - intersection / union
            grad = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
            here = ops.cast(gts > 0, "float32")
            total += here * ops.sum(ops.take(errors, order) * ops.stop_gradient(grad))
            present += here
        return total / ops.maximum(present, 1.0)

    return loss


def with_distillation(base: Callable, weight: float) -> Callable:
    """`base` on the labels plus `weight` × the mean per-pixel KL(teacher || model) over every pixel.

    `y_true` packs the labels and a teacher's probabilities, (B, H, W, 1 + C). The teacher saw the clean frame and
    the model the same frame through a random camera (`degrade`), so the term asks for the same answer whatever
    the camera; unlike the labels it also covers unlabelled pixels, and it holds the clean behaviour in place
    while the model learns the camera.
    """

    def distilled(y_true, y_pred):
        teacher = ops.clip(ops.cast(y_true[..., 1:], "float32"), EPS, 1.0)
        probs = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0)
        kl = ops.sum(teacher * (ops.log(teacher) - ops.log(probs)), axis=-1)
        return base(y_true[..., 0], y_pred) + weight * ops.mean(kl)

    return distilled


def make_loss(name: str, weights: np.ndarray, gamma: float = 2.0, dice_weight: float = 0.5,
              lovasz: float = 0.0) -> Callable:
    """`wce` (seed 2), `dice_focal` (seed 1) or `wce_dice` (cross-entropy + dice_weight * Dice); `lovasz` > 0 adds
    that weight times `lovasz_softmax` to any of them."""
    base = _base_loss(name, weights, gamma, dice_weight)
    if not lovasz:
        return base
    jaccard = lovasz_softmax(weights)

    def with_lovasz(y_true, y_pred):
        return base(y_true, y_pred) + lovasz * jaccard(y_true, y_pred)

    return with_lovasz


def _base_loss(name: str, weights: np.ndarray, gamma: float, dice_weight: float) -> Callable:
    """The pixel loss `name` names (make_loss adds the optional terms)."""
    if name == "wce":
        return weighted_ce(weights)
    if name == "dice_focal":
        dice, focal = weighted_dice(weights), weighted_focal(weights, gamma)

        def dice_focal(y_true, y_pred):
            return dice(y_true, y_pred) + focal(y_true, y_pred)

        return dice_focal
    if name == "wce_dice":
        ce, dice = weighted_ce(weights), weighted_dice(weights)

        def wce_dice(y_true, y_pred):
            return ce(y_true, y_pred) + dice_weight * dice(y_true, y_pred)

        return wce_dice
    raise ValueError(f"unknown loss {name!r}; choose wce, wce_dice or dice_focal")
