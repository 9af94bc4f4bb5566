"""Rebuild a trainable float Keras model from an exported int8 TFLite model of the same architecture.

Used once, when the float weights of the bundled run were lost with its `runs/` folder (it is not in git): the
int8 model still holds every weight, per output channel to 8 bits, with batch norm folded into the convolutions.
Each Conv2D gets its dequantized (folded) kernel and bias; each batch norm after a convolution is re-parameterised
to an identity on the statistics measured on training tiles (moving mean/variance = those statistics, gamma =
sqrt(var + eps), beta = mean + folded bias), so inference computes exactly the folded function and a training
step, which normalises by batch statistics, starts from nearly the same one. Logit offsets folded at export time
(`--offsets`, from the model card) are taken out so a fine-tuning leg can fit its own.

    python -m tools.float_from_int8 edge/assets/model_int8.tflite --data FRAMES.npz --out runs/v17q-float/model.keras
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from tools import one_line_errors

# TensorFlow's name scope adds one `_k` to each Keras layer name: conv2d_49 -> conv2d_49_1, conv2d -> conv2d_2
KERNEL = re.compile(r"(?:^|/)conv2d(?:_(\d+))?_\d+/convolution$")


def int8_conv_weights(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Creation index of each Conv2D -> (float kernel (kh, kw, in, out), float bias (out,)) from the int8 model."""
    from marsseg.core.interpreter import make_interpreter

    interp = make_interpreter(path, delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for op in interp._get_ops_details():
        if op["op_name"] != "CONV_2D":
            continue
        _, w_idx, b_idx = op["inputs"]
        w, b = tensors[w_idx], tensors[b_idx]
        names = [m for m in (KERNEL.search(n) for n in w["name"].split(";")) if m]
        if len(names) != 1:
            raise ValueError(f"cannot tell which Conv2D the kernel {w['name']!r} belongs to")
        index = int(names[0].group(1) or 0)
        wq, bq = w["quantization_parameters"], b["quantization_parameters"]
        kernel = interp.get_tensor(w_idx).astype(np.float32) * wq["scales"][:, None, None, None].astype(np.float32)
        bias = interp.get_tensor(b_idx).astype(np.float32) * bq["scales"].astype(np.float32)
        found[index] = (kernel.transpose(1, 2, 3, 0), bias)
    return found


def rebuild(model_path: Path, cfg, tiles: np.ndarray, offsets: np.ndarray):
    """The float model of `cfg`'s architecture carrying the int8 model's function (without `offsets`)."""
    import keras
    from marsseg.core.spec import preprocess
    from marsseg.train.model import build_model
    from marsseg.train.quant import consumers

    model = build_model(cfg)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    order = sorted(convs, key=lambda layer: int(layer.name.rsplit("_", 1)[1]) if "_" in layer.name else 0)
    # names follow creation order in a fresh process (conv2d, conv2d_1, ...), as in the exported model's graph
    weights = int8_conv_weights(model_path)
    if len(weights) != len(order):
        raise ValueError(f"{model_path} has {len(weights)} convolutions, the config builds {len(order)}")
    after = consumers(model)
    folded: dict[str, np.ndarray] = {}  # batch norm name -> the bias folded into its conv
    for index, conv in zip(sorted(weights), order, strict=True):  # both numbered in creation order, maybe offset
        kernel, bias = weights[index]
        nxt = [model.get_layer(n) for n in after.get(conv.name, [])]
        bns = [n for n in nxt if isinstance(n, keras.layers.BatchNormalization)]
        conv.kernel.assign(kernel)
        if bns:
            folded[bns[0].name] = bias
        else:
            conv.bias.assign(bias)
    last = order[-1]
    last.bias.assign(keras.ops.convert_to_numpy(last.bias) - offsets.astype(np.float32))
    bns = [model.get_layer(n) for n in folded]
    for bn in bns:  # first the exact folded function (identity plus bias), so the statistics below are the real ones
        c = bn.input.shape[-1]
        bn.set_weights([np.ones(c, np.float32), folded[bn.name], np.zeros(c, np.float32),
                        np.full(c, 1.0 - bn.epsilon, np.float32)])
    probe = keras.Model(model.input, [bn.input for bn in bns])
    sums = [np.zeros(bn.input.shape[-1], np.float64) for bn in bns]
    squares = [np.zeros_like(s) for s in sums]
    for s in range(0, len(tiles), 64):
        outs = probe.predict_on_batch(preprocess(tiles[s : s + 64]))
        for k, z in enumerate(outs):
            z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
            sums[k] += z.sum(0)
            squares[k] += (z * z).sum(0)
    for k, bn in enumerate(bns):
        n = len(tiles) * np.prod(bn.input.shape[1:-1])
        mean = sums[k] / n
        var = np.maximum(squares[k] / n - mean**2, 0.0)
        gamma = np.sqrt(var + bn.epsilon)
        bn.set_weights([gamma.astype(np.float32), (mean + folded[bn.name]).astype(np.float32),
                        mean.astype(np.float32), var.astype(np.float32)])
    return model


@one_line_errors("float_from_int8")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.float_from_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="int8 .tflite exported from --config's architecture")
    p.add_argument("--config", type=Path, default=Path("train/configs/default.json"))
    p.add_argument("--data", required=True, help="frames file: batch-norm statistics are measured on its tiles")
    p.add_argument("--tiles", type=int, default=512, help="training tiles for the statistics")
    p.add_argument("--offsets", type=float, nargs="*", default=[],
                   help="logit offsets folded into the int8 model, taken out (see its model card)")
    p.add_argument("--out", type=Path, required=True, help="the .keras file to write")
    p.add_argument("--note", default="", help="appended to the provenance note a model card quotes")
    a = p.parse_args(argv)
    if a.tiles < 1:
        p.error(f"--tiles takes 1 or more, got {a.tiles}")
    from marsseg.core.io import sha256_file, write_atomic, write_text_atomic
    from marsseg.train import data as D
    from marsseg.train.config import TrainConfig

    from tools.make_assets import PROVENANCE

    cfg = TrainConfig.load(a.config)
    x, _ = D.fixed_tiles(D.prepare(cfg.data, a.data).train)
    pick = np.sort(np.random.default_rng(0).choice(len(x), size=min(a.tiles, len(x)), replace=False))
    model = rebuild(a.model, cfg.model, x[pick], np.asarray(a.offsets or [0.0] * 5, np.float32))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out, lambda path: model.save(path))
    meta = json.loads(a.model.with_suffix(".json").read_text()) if a.model.with_suffix(".json").is_file() else {}
    write_text_atomic(a.out.parent / PROVENANCE, json.dumps({  # what tools.make_assets quotes in a model card
        "command": "python -m tools.float_from_int8 " + shlex.join(sys.argv[1:] if argv is None else argv),
        "note": f"float weights rebuilt from the int8 export of run {meta.get('run_id', '?')} (sha256 "
                f"{sha256_file(a.model)[:12]}…) by `tools/float_from_int8.py`: per-channel dequantized kernels and "
                f"biases (batch norm folded), batch norm re-parameterised to identity on {len(pick)} training tiles, "
                f"logit offsets {list(a.offsets)} taken out; that run's own float weights were lost with its runs/ "
                "folder." + (f" {a.note}" if a.note else ""),
    }, indent=1))
    print(f"{a.out}: float model rebuilt from {a.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
