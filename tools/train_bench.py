"""Training speed of the default model: tiles/s for the input pipelines and compilers the field uses.

  python -m tools.train_bench [--output bench/results] [--quick]

Each variant runs in its own process (a fresh TensorFlow, nothing shared), trains the default recipe's model with
its loss on random tiles for a warm-up epoch, then times `--steps` steps of `model.fit`:
- `pydataset`: a `keras.utils.PyDataset` serving preprocessed batches, as `marsseg-train` did until 2026-12-04;
- `pydataset-workers2`: the same read by Keras' two-thread enqueuer (`workers=2`);
- `tfdata`: `tf.data` from tensors, batched and prefetched;
- `tfdata-xla`: the same with `jit_compile=True` (XLA).
Forward + backward is counted as 3× the forward MACs (a convolution's backward pass computes the input and the
weight gradients, each as costly as the forward); the ratio to a float32 BLAS matmul on all cores says how much of
the CPU's arithmetic the training loop uses. Writes bench/results/<host>-<date>-train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from marsseg.core.io import writable_folder

from tools import one_line_errors
from tools.bench import REPO, base_result, matmul_peak, say, write_result

VARIANTS = ("pydataset", "pydataset-workers2", "tfdata", "tfdata-xla")

CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np, keras, tensorflow as tf
    from marsseg.core.spec import preprocess
    from marsseg.train.config import TrainConfig
    from marsseg.train.losses import make_loss
    from marsseg.train.macs import count_macs
    from marsseg.train.model import build_model
    variant, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cfg = TrainConfig.load(sys.argv[4])
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    loss = make_loss(cfg.optim.loss, np.array([0, 1, 1, 2, 4], "float32"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=variant.endswith("xla"))
    rng = np.random.default_rng(0)
    x = preprocess(rng.integers(0, 256, (steps * batch, 64, 128), dtype=np.uint8))
    y = rng.integers(0, 5, (steps * batch, 64, 128)).astype(np.int32)

    class Batches(keras.utils.PyDataset):
        def __init__(self, workers):
            super().__init__(workers=workers)
        def __len__(self):
            return steps
        def __getitem__(self, i):
            return x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]

    if variant.startswith("pydataset"):
        data = Batches(2 if variant.endswith("workers2") else 1)
    else:
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(tf.data.AUTOTUNE)
    model.fit(data, epochs=1, verbose=0)  # warm-up: tracing, compilation, allocations
    t0 = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    print(json.dumps({"variant": variant, "tiles_per_s": round(steps * batch / dt, 1), "batch": batch,
                      "steps": steps, "macs_per_tile": count_macs(model),
                      "gpus": len(tf.config.list_physical_devices("GPU"))}))
""")


def run_variant(variant: str, steps: int, batch: int, config: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, variant, str(steps), str(batch), str(config)],
                       capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=REPO)
    if r.returncode:  # recorded, not fatal: e.g. XLA on CPU has no kernel for an op's gradient
        why = next((line.strip() for line in r.stderr.splitlines() if "unsupported" in line.lower()),
                   r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
        return {"variant": variant, "error": why[:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


@one_line_errors("train_bench")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--config", type=Path, default=REPO / "train" / "configs" / "default.json")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="3 steps of batch 8 (smoke check)")
    a = p.parse_args(argv)
    if not a.config.is_file():
        p.error(f"config file not found: {a.config}")
    if min(a.steps, a.batch) < 1:
        p.error(f"--steps and --batch take 1 or more, got {a.steps} and {a.batch}")
    writable_folder(a.output, "--output")
    steps, batch = (3, 8) if a.quick else (a.steps, a.batch)
    result = base_result()
    peak = matmul_peak(1.0 if a.quick else 3.0)
    rows = []
    for v in VARIANTS:
        r = run_variant(v, steps, batch, a.config)
        if "error" in r:
            say(f"  {v}: failed: {r['error']}")
            rows.append(r)
            continue
        r["train_gmac_s"] = round(r["tiles_per_s"] * 3 * r["macs_per_tile"] / 1e9, 2)
        r["share_of_matmul_peak"] = round(r["train_gmac_s"] / peak, 3)
        say(f"  {v}: {r['tiles_per_s']} tiles/s (batch {batch}), {r['train_gmac_s']} GMAC/s forward+backward, "
            f"{r['share_of_matmul_peak']:.0%} of the float32 matmul peak ({peak:.1f} GMAC/s)")
        rows.append(r)
    if all("error" in r for r in rows):  # nothing measured: no results file that reads like one
        say("every variant failed; nothing written")
        return 1
    result["training"] = {"float32_matmul_peak_gmac_s": round(peak, 2), "variants": rows}
    return write_result(result, a.output, "-train")


if __name__ == "__main__":
    sys.exit(main())
