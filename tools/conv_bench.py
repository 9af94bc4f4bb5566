"""Why int8 is (or is not) faster than float32 on this CPU: one 3x3 conv per level of the default model.

  python -m tools.conv_bench [--output bench/results] [--quick]

For each (height, width, channels) of the default dual U-Net's levels (and the next multiple of 16), builds a
single same-padded 3x3 conv C->C + ReLU, converts it to float32 and full-integer int8 TFLite, and times both
with XNNPACK (2 threads, batch 16). Without int8 dot-product instructions (x86 VNNI, Arm SDOT) XNNPACK's int8
GEMM is about as fast as float32 FMA, so int8 buys size, not speed; the CPU's flags are recorded with the result.
Needs TensorFlow (the `[train]` extra) for the conversion; writes bench/results/<host>-<date>-conv.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from marsseg.core.interpreter import input_info, make_interpreter, resize_batch, set_input
from marsseg.core.io import writable_folder

from tools import one_line_errors
from tools.bench import REPO, base_result, say, write_result

# (height, width, channels) of the default model's conv levels, and the same levels widened to a multiple of 16
LEVELS = [(64, 128, 12), (64, 128, 16), (32, 64, 24), (32, 64, 32), (16, 32, 48), (16, 32, 64), (8, 16, 96)]
BATCH = 16


def conv_tflite(h: int, w: int, c: int, int8: bool) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    inp = keras.Input((h, w, c))
    model = keras.Model(inp, keras.layers.Conv2D(c, 3, padding="same", activation="relu")(inp))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.normal(size=(1, h, w, c)).astype("float32")] for _ in range(8))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the whole signature
        return conv.convert()


def time_invoke(blob: bytes, work: Path, reps: int) -> float:
    """Median seconds per tile of one batch-16 invoke (after a warm-up)."""
    path = work / "conv.tflite"
    path.write_bytes(blob)
    interp = make_interpreter(path, num_threads=2)
    resize_batch(interp, BATCH)
    info = input_info(interp)
    set_input(interp, np.zeros(info.shape, info.dtype))
    interp.invoke()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / BATCH


@one_line_errors("conv_bench")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="conv_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke check)")
    a = p.parse_args(argv)
    writable_folder(a.output, "--output")
    result = base_result()
    rows = []
    say("one 3x3 conv per level, float32 vs int8 (XNNPACK, 2 threads, batch 16)")
    with tempfile.TemporaryDirectory() as tmp:
        for h, w, c in LEVELS:
            macs = h * w * 9 * c * c
            f32, i8 = (time_invoke(conv_tflite(h, w, c, q), Path(tmp), 5 if a.quick else 30) for q in (False, True))
            row = {"height": h, "width": w, "channels": c, "macs": macs,
                   "float32_ms": round(f32 * 1e3, 3), "int8_ms": round(i8 * 1e3, 3),
                   "float32_gmac_s": round(macs / f32 / 1e9, 1), "int8_gmac_s": round(macs / i8 / 1e9, 1),
                   "int8_speedup": round(f32 / i8, 2)}
            say(f"  {h}x{w} C={c}: float32 {row['float32_ms']} ms ({row['float32_gmac_s']} GMAC/s), int8 "
                f"{row['int8_ms']} ms ({row['int8_gmac_s']} GMAC/s): int8 {row['int8_speedup']}x")
            rows.append(row)
    result["conv_levels"] = rows
    return write_result(result, a.output, "-conv")


if __name__ == "__main__":
    sys.exit(main())
