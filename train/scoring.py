"""A Keras model's answers on uint8 tiles and the scores and pictures of a run's model (training, adjust, export)."""

from __future__ import annotations

import weakref
from pathlib import Path

import keras
import numpy as np
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.core.spec import CLASS_NAMES, preprocess
from marsseg.train import cluster


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
    if _spans_processes():
        probs = np.concatenate([answer_batch(model, preprocess(x[i : i + batch_size]))
                                for i in range(0, len(x), batch_size)])[:n]
    else:
        probs = model.predict(preprocess(x), batch_size=batch_size, verbose=0)[:n]
    return probs.argmax(-1).astype(np.uint8), probs


def _spans_processes() -> bool:
    """Whether the model's variables live on the devices of several processes (a distributed job's training)."""
    return cluster.process_count() > 1 and keras.distribution.distribution() is not None


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def answer_batch(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's output for one preprocessed batch, as NumPy. In a job of several processes
    (`cluster`) every process passes the same whole batch, feeds its share and gets the whole answer back (Keras'
    own predict returns arrays that span other processes' devices, which NumPy cannot read)."""
    if not _spans_processes():
        return np.asarray(model.predict_on_batch(x))
    import jax
    from jax.experimental import multihost_utils

    if model not in _FORWARD:
        _FORWARD[model] = jax.jit(lambda tv, ntv, b: model.stateless_call(tv, ntv, b, training=False)[0])
    n = len(x)
    x = np.concatenate([x, np.zeros((-n % data_parallel_devices(), *x.shape[1:]), x.dtype)])  # equal shares
    layout = keras.distribution.distribution().get_data_layout(x.shape).backend_layout
    local = x[cluster.own_rows(len(x))]
    out = _FORWARD[model]([v.value for v in model.trainable_variables],
                          [v.value for v in model.non_trainable_variables],
                          jax.make_array_from_process_local_data(layout, local))
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))[:n]


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
