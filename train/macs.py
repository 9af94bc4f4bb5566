"""Count multiply-accumulates per tile from a built Keras model (the compute that matters on the board)."""

from __future__ import annotations

import math

import keras
from keras import layers


def layer_macs(layer: keras.layers.Layer) -> int:
    """MACs of one layer for a batch of one; 0 for layers whose cost is negligible (BN folds away)."""
    if isinstance(layer, layers.Conv2D):
        out = layer.output.shape
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1] // layer.groups
        return math.prod(out[1:3]) * kh * kw * cin * out[-1]
    if isinstance(layer, layers.Dense):
        out = layer.output.shape
        return math.prod(out[1:-1]) * layer.input.shape[-1] * out[-1]
    if isinstance(layer, layers.MultiHeadAttention):
        seq = layer.input[0].shape[1]  # called as (query, value): a list of inputs
        projections = sum(math.prod(d.kernel.shape) for d in (
            layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense))
        attention = 2 * seq * seq * layer.num_heads * layer.key_dim  # scores and weighted sum
        return seq * projections + attention
    return 0


def count_macs(model: keras.Model) -> int:
    return sum(layer_macs(layer) for layer in model.layers)
