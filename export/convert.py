"""Keras -> TFLite (float32 and full-integer int8), op report, and the float-vs-int8 accuracy gate."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from marsseg.core import interpreter as it
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.core.spec import preprocess

log = logging.getLogger(__name__)

# Ops that are slow or numerically fragile as int8 on embedded delegates (XNNPACK, Edge TPU, NPUs).
TROUBLE_OPS = frozenset({
    "TRANSPOSE_CONV",  # int8 accuracy problems reported in the LiteRT/TF trackers
    "RESIZE_BILINEAR",  # likewise; use nearest + conv
    "TILE", "BROADCAST_TO",  # Keras 3 UpSampling2D lowering; slow in the int8 runtime
    "DEQUANTIZE", "QUANTIZE_FLOAT",  # a float island inside an int8 graph
    "FLEX_DELEGATE", "CUSTOM",
    "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND",  # dilated convs with a dynamic batch: unfused, delegate-hostile
})


def representative_dataset(tiles: np.ndarray, progress_every: int = 64) -> Iterator[list[np.ndarray]]:
    """Calibration batches through the shared preprocessing function, with progress."""
    for i in range(len(tiles)):
        if i % progress_every == 0:
            log.info("calibrating: %d/%d tiles", i, len(tiles))
        yield [preprocess(tiles[i : i + 1])]


def convert(model, calibration: np.ndarray | None) -> bytes:
    """float32 TFLite when `calibration` is None, else full-integer int8 (int8 in/out, int8 builtins only)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: representative_dataset(calibration)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


def op_report(model_path: Path) -> dict:
    """Ops of a converted model, with the ones that break the full-integer contract."""
    interp = it.make_interpreter(model_path, delegates=False)  # the model's own ops, not XNNPACK partitions
    ops = it.op_names(interp)
    i, o = it.input_info(interp), it.output_info(interp)
    problems = [f"float tensor in op {x}" for x in it.float_tensors_in_ops(interp)]
    problems += [f"trouble op {op}" for op in sorted(set(ops) & TROUBLE_OPS)]
    refused = it.xnnpack_accepts(model_path)
    if refused:
        problems.append(f"XNNPACK delegate refuses the model ({refused}); often a dead layer (all-zero "
                        "activations over the calibration set)")
    if i.dtype != np.int8 or o.dtype != np.int8:
        problems.append(f"input/output must be int8, got {i.dtype}/{o.dtype}")
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return {"ops": counts, "op_count": len(ops), "input": [i.dtype.name, list(i.shape), i.scale, i.zero_point],
            "output": [o.dtype.name, list(o.shape), o.scale, o.zero_point], "problems": problems}


def evaluate_tflite(model_path: Path, meta, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Argmax predictions of a TFLite model over uint8 tiles, through the runtime's own TileModel."""
    from marsseg.edge.model import TileModel

    m = TileModel(model_path, meta=meta)
    preds = np.empty(x.shape, np.uint8)
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        preds[s : s + batch] = m.predict(x[s : s + batch]).argmax(-1)
        if (s // batch) % 20 == 0:
            log.info("evaluating %s: %d/%d tiles", model_path.name, s, len(x))
    log.info("evaluated %s in %.1f s", model_path.name, time.perf_counter() - t0)
    return preds


def summarise(name: str, y: np.ndarray, pred: np.ndarray, reference: np.ndarray | None) -> dict:
    s = scores(confusion_matrix(y, pred)).as_dict()
    if reference is not None:
        s["argmax_agreement"] = float((pred == reference).mean())
    s["name"] = name
    return s
