"""A Keras model's answers on uint8 tiles and the scores and pictures of a run's model (training, adjust, export)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from marsseg.edge.metrics import confusion_matrix, scores
from marsseg.edge.spec import CLASS_NAMES, preprocess


def data_parallel_devices() -> int:
    """How many devices `keras.distribution` splits each batch over (1 without a distribution)."""
    dist = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    return int(np.prod(dist.device_mesh.shape)) if dist is not None else 1


def predict_classes(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Argmax classes and the probabilities for uint8 tiles (N, H, W), through the shared preprocessing.

    Split over several devices every batch must divide between them, so the tiles are padded (and the answers
    for the padding dropped)."""
    n, k = len(x), data_parallel_devices()
    if k > 1 and (n % batch_size) % k:
        x = np.concatenate([x, np.zeros((k - n % batch_size % k, *x.shape[1:]), x.dtype)])
    probs = model.predict(preprocess(x), batch_size=batch_size, verbose=0)[:n]
    return probs.argmax(-1).astype(np.uint8), probs


def mean_iou(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> float:
    return scores(confusion_matrix(y, predict_classes(model, x, batch_size)[0])).mean_iou


def evaluate_run(model: keras.Model, val_x: np.ndarray, val_y: np.ndarray, run_dir: Path, batch_size: int = 64,
                 plotted: int = 8) -> dict:
    """Validation scores + confusion matrix of the model a run ships, with its confusion and prediction plots."""
    from marsseg.train import report

    pred, _ = predict_classes(model, val_x, batch_size)
    cm = confusion_matrix(val_y, pred)
    report.plot_confusion(cm, run_dir / "confusion.png")
    k = min(plotted, len(val_x))
    pick = np.random.default_rng(0).choice(len(val_x), size=k, replace=False)
    report.plot_predictions(val_x[pick], val_y[pick], pred[pick], run_dir / "predictions.png")
    return {**scores(cm).as_dict(), "confusion_matrix": cm.tolist(), "class_names": list(CLASS_NAMES)}
