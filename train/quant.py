"""Quantization-aware fine-tuning: train through the 8-bit rounding the int8 export will apply to activations.

Post-training int8 quantization of the default model costs ~1 point of mean IoU, spread over every layer (each
at the rounding floor, none an outlier), and it grows as the float model sharpens. Training a last leg with each
int8 tensor of the converted graph rounded to 8 bits over its running range lets the weights settle where that
rounding changes fewer decisions. The model saved is the plain float model (the fake-quant layers only wrap it,
sharing its layers); the export still calibrates and converts it as usual.

tfmot's QAT does not support Keras 3, so this uses `keras.quantizers.fake_quant_with_min_max_vars`, which works
on every backend. Weights are not fake-quantized: the converter folds batch norm first and rounds weights per
output channel, an error far below the per-tensor activation rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
from keras import layers, ops

# The converter fuses these into the op that feeds them (batch norm folds into the conv, ReLU into conv/add),
# so a tensor consumed only by them never exists in int8.
FUSED = (layers.BatchNormalization, layers.ReLU)
# These keep their input's int8 scale (or vanish at inference), so their output adds no rounding of its own;
# the softmax output has a fixed 1/256 scale and feeds the loss.
PASS_THROUGH = (layers.InputLayer, layers.MaxPooling2D, layers.Resizing, layers.Dropout, layers.Reshape,
                layers.Softmax)


class FakeQuant(layers.Layer):
    """Round to 256 levels over a running [min, max] of the training batches; identity gradient inside it.

    The range starts from the first training batch, then follows an exponential moving average, as the batch
    norm statistics do. Before any training step the range is empty, so call it in training mode first.
    """

    def __init__(self, momentum: float = 0.99, **kwargs) -> None:
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, input_shape) -> None:
        self.lo = self.add_weight(shape=(), initializer="zeros", trainable=False, name="min")
        self.hi = self.add_weight(shape=(), initializer="zeros", trainable=False, name="max")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training: bool = False):
        if training:
            keep = ops.where(self.seen > 0, self.momentum, 0.0)
            self.lo.assign(keep * self.lo + (1 - keep) * ops.min(ops.stop_gradient(x)))
            self.hi.assign(keep * self.hi + (1 - keep) * ops.max(ops.stop_gradient(x)))
            self.seen.assign(1.0)
        return keras.quantizers.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8)

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum}


def _sources(node_config) -> Iterator[str]:
    """Names of the layers whose outputs a serialized node reads (tensors carry `keras_history`)."""
    if isinstance(node_config, dict):
        if "keras_history" in node_config:
            yield node_config["keras_history"][0]
        for v in node_config.values():
            yield from _sources(v)
    elif isinstance(node_config, list | tuple):
        for v in node_config:
            yield from _sources(v)


def layer_inputs(model: keras.Model) -> dict[str, list[str]]:
    """Layer name -> the layers of `model` whose outputs it reads, from the functional model's public config (the
    layers' own nodes would also list other models sharing the layer, such as the fake-quant wrapper)."""
    return {spec["name"]: sorted(set(_sources(spec["inbound_nodes"]))) for spec in model.get_config()["layers"]}


def consumers(model: keras.Model) -> dict[str, list[str]]:
    """Layer name -> the layers of `model` reading its output."""
    out: dict[str, list[str]] = {}
    for name, sources in layer_inputs(model).items():
        for src in sources:
            out.setdefault(src, []).append(name)
    return out


def int8_tensors(model: keras.Model) -> set[str]:
    """Names of the layers whose output is its own int8 tensor in the converted model."""
    readers = consumers(model)
    names = set()
    for layer in model.layers:
        if isinstance(layer, PASS_THROUGH):
            continue
        fed = [model.get_layer(n) for n in readers.get(layer.name, [])]
        if fed and all(isinstance(c, FUSED) for c in fed):
            continue
        names.add(layer.name)
    return names


def with_fake_quant(model: keras.Model, momentum: float = 0.99) -> keras.Model:
    """A model that shares `model`'s layers (and so its weights) with a FakeQuant after each int8 tensor."""
    wanted = int8_tensors(model)

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return FakeQuant(momentum, name=f"{layer.name}_fq")(out) if layer.name in wanted else out

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
