"""Start a model from another of the same architecture that is as wide or narrower, computing the same function.

Growing a trained model is how a capacity question gets answered without a from-scratch run: every source weight is
copied into the leading channels of its layer, the new output channels keep their fresh initialisation, and every
weight that reads a new channel starts at zero, so the wider model's output equals the source's until training moves
them (Net2Net's function-preserving idea with zero wiring instead of split copies). Concatenations shift where a
branch's channels sit, so the source channel behind each target channel is followed through the layer graph.
"""

from __future__ import annotations

import keras
import numpy as np

PASS_THROUGH = ("Activation", "Dropout", "GlobalAveragePooling2D", "InputLayer", "MaxPooling2D", "ReLU", "Resizing",
                "Softmax")


class WidenError(ValueError):
    """The source model cannot be mapped onto the target (another architecture, or wider somewhere)."""


def transfer_weights(source: keras.Model, target: keras.Model, check_batch: int = 2) -> bool:
    """Load `source`'s weights into `target` (built by the same code with widths ≥ the source's); returns whether it
    widened. Checks on a random batch that both models give the same answers, and raises `WidenError` if not."""
    if [w.shape for w in source.weights] == [w.shape for w in target.weights]:
        target.set_weights(source.get_weights())
        return False
    src_layers, tgt_layers = source.layers, target.layers
    if [type(a).__name__ for a in src_layers] != [type(b).__name__ for b in tgt_layers]:
        raise WidenError(f"{source.name} and {target.name} are built from different layers (another architecture, "
                         "or widths that change which blocks need a projection shortcut); start from a model of this "
                         "architecture and block structure")
    maps: dict[int, tuple[np.ndarray, int]] = {}  # id(target tensor) -> (source channel of each channel or -1, width)
    for ls, lt in zip(src_layers, tgt_layers, strict=True):
        ins = [maps[id(t)] for t in _as_list(lt.input)] if type(lt).__name__ != "InputLayer" else []
        out = _transfer_layer(ls, lt, ins)
        for t in _as_list(lt.output):
            maps[id(t)] = out
    x = np.random.default_rng(0).uniform(0, 1, (check_batch, *source.inputs[0].shape[1:])).astype("float32")
    gap = float(np.max(np.abs(source.predict(x, verbose=0) - target.predict(x, verbose=0))))
    if gap > 1e-4:
        raise WidenError(f"the widened {target.name} differs from its source by {gap:.2g}: a layer is not mapped")
    return True


def _as_list(t) -> list:
    return list(t) if isinstance(t, list | tuple) else [t]


def _transfer_layer(ls, lt, ins: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Copy one layer's weights; returns its output's channel map and the source output's width."""
    kind = type(lt).__name__
    if kind == "InputLayer":
        c = lt.output.shape[-1]
        return np.arange(c), c
    if kind == "Conv2D":
        (cmap, width), = ins
        k_src, k = ls.kernel.numpy(), lt.kernel.numpy()
        co = k_src.shape[-1]
        if width != k_src.shape[2] or k.shape[-1] < co or set(range(width)) - set(cmap.tolist()):
            raise WidenError(f"layer {lt.name} is wider in the start model ({width} in, {co} out) than in this one; "
                             "give every model width at least the start model's")
        old = cmap >= 0
        k[:, :, ~old, :co] = 0.0  # nothing the source had reads a new channel
        k[:, :, old, :co] = k_src[:, :, cmap[old], :]
        weights = [k]
        if lt.use_bias:
            b = lt.bias.numpy()
            b[:co] = ls.bias.numpy()
            weights.append(b)
        lt.set_weights(weights)
        return _grown(co, k.shape[-1]), co
    if kind == "BatchNormalization":
        (cmap, width), = ins
        old = cmap >= 0
        weights = []
        for w_src, w in zip(ls.get_weights(), lt.get_weights(), strict=True):
            w[old] = w_src[cmap[old]]
            weights.append(w)
        lt.set_weights(weights)
        return cmap, width
    if ls.get_weights():
        raise WidenError(f"layer {lt.name} ({kind}) has weights this widening does not know how to map")
    if kind == "Concatenate":
        parts, offset = [], 0
        for cmap, width in ins:
            parts.append(np.where(cmap >= 0, cmap + offset, -1))
            offset += width
        return np.concatenate(parts), offset
    if kind in ("Add", "Multiply"):
        if any(not np.array_equal(ins[0][0], m) for m, _ in ins[1:]):
            raise WidenError(f"layer {lt.name}: its inputs were widened differently")
        return ins[0]
    if kind in PASS_THROUGH:
        return ins[0]
    raise WidenError(f"layer {lt.name} ({kind}): unknown to the widening; start from a model of the same widths")


def _grown(old: int, new: int) -> np.ndarray:
    return np.concatenate([np.arange(old), np.full(new - old, -1)])
