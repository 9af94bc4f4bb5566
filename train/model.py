"""The two seed architectures, built from Keras layers only (runs on the TensorFlow or JAX backend).

Only int8-friendly, XNNPACK-fast ops: 3x3/1x1 convolutions, batch norm (folded at export), ReLU, max-pool,
nearest-neighbour `Resizing` for upsampling, concatenation, a global-mean + 1x1-conv + sigmoid
squeeze-and-excitation, and a final softmax.
"""

from __future__ import annotations

import keras
from keras import layers
from marsseg.core.spec import NUM_CLASSES, TILE_SHAPE
from marsseg.train.config import ModelConfig


def conv_bn(x, filters: int, cfg: ModelConfig, kernel: int = 3, dilation: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=cfg.bn_momentum)(x)
    return layers.ReLU()(x) if relu else x


def res_block(x, filters: int, cfg: ModelConfig):
    """Two 3x3 conv+BN with an identity (or 1x1 projection) shortcut."""
    shortcut = x if x.shape[-1] == filters else conv_bn(x, filters, cfg, kernel=1, relu=False)
    y = conv_bn(x, filters, cfg)
    y = conv_bn(y, filters, cfg, relu=False)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def squeeze_excite(x, ratio: int):
    """Channel attention: global mean -> 1x1 conv (ReLU) -> 1x1 conv (sigmoid) -> rescale."""
    c = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(max(c // ratio, 4), 1, activation="relu")(s)
    s = layers.Conv2D(c, 1, activation="sigmoid")(s)
    return layers.Multiply()([x, s])


def upsample_to(x, height: int, width: int):
    return layers.Resizing(height, width, interpolation="nearest")(x)


def unet_branch(x, widths: tuple[int, ...], bottleneck: int, cfg: ModelConfig, blocks: int):
    """Encoder (res blocks + max-pool), SE bottleneck with dropout, decoder with skip connections."""
    skips = []
    for f in widths:
        x = res_block(x, f, cfg)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    for _ in range(blocks):
        x = res_block(x, bottleneck, cfg)
    x = squeeze_excite(x, cfg.se_ratio)
    x = layers.Dropout(cfg.dropout)(x)
    for f, skip in zip(reversed(widths), reversed(skips), strict=True):
        x = conv_bn(x, f, cfg, kernel=1)  # narrow at low resolution, where it is cheap
        x = upsample_to(x, skip.shape[1], skip.shape[2])
        x = layers.Concatenate()([x, skip])
        x = res_block(x, f, cfg)
    return x


def dual_unet(cfg: ModelConfig) -> keras.Model:
    """Seed 1's dual U-Net: a full-resolution detail branch and a quarter-resolution context branch.

    Compute is put at low resolution: the detail branch is narrow at full resolution; the context branch
    starts after a cheap conv + max-pool stem at 1/4 scale, is wider, and ends in two bottleneck blocks at
    1/16 scale whose receptive field covers the whole tile. No dilated convs: with a dynamic batch the
    converter lowers them to SPACE_TO_BATCH/BATCH_TO_SPACE pairs, which embedded delegates handle badly.
    Branch outputs meet at full resolution, then 1x1 conv + softmax.
    """
    h, w = TILE_SHAPE
    inp = keras.Input((h, w, 1), name="image")
    fine = unet_branch(inp, cfg.fine_widths, cfg.bottleneck, cfg, blocks=1)
    coarse = inp
    for f in (cfg.fine_widths[0], cfg.coarse_widths[0]):  # stem: conv + pool twice, 1/4 scale
        coarse = layers.MaxPooling2D(2)(conv_bn(coarse, f, cfg))
    coarse = unet_branch(coarse, cfg.coarse_widths, cfg.coarse_bottleneck, cfg, blocks=2)
    coarse = conv_bn(coarse, cfg.fine_widths[0], cfg, kernel=1)
    coarse = upsample_to(coarse, h, w)
    x = layers.Concatenate()([fine, coarse])
    out = layers.Conv2D(NUM_CLASSES, 1)(x)
    out = layers.Softmax(dtype="float32", name="probs")(out)
    return keras.Model(inp, out, name="dual_unet")


def transformer_block(x, heads: int, dropout: float):
    """Pre-norm Transformer encoder block over the bottleneck's spatial positions."""
    hh, ww, c = x.shape[1:]
    t = layers.Reshape((hh * ww, c))(x)
    a = layers.LayerNormalization()(t)
    a = layers.MultiHeadAttention(heads, c // heads, dropout=dropout)(a, a)
    t = layers.Add()([t, a])
    f = layers.LayerNormalization()(t)
    f = layers.Dense(c * 2, activation="gelu")(f)
    f = layers.Dropout(dropout)(f)
    f = layers.Dense(c)(f)
    t = layers.Add()([t, f])
    return layers.Reshape((hh, ww, c))(t)


def aspp(x, filters: int, cfg: ModelConfig):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3s and an image-level branch, fused by 1x1."""
    branches = [conv_bn(x, filters, cfg, kernel=1)]
    branches += [conv_bn(x, filters, cfg, dilation=d) for d in (2, 3)]
    g = layers.GlobalAveragePooling2D(keepdims=True)(x)
    g = conv_bn(g, filters, cfg, kernel=1)
    branches.append(upsample_to(g, x.shape[1], x.shape[2]))
    return conv_bn(layers.Concatenate()(branches), filters, cfg, kernel=1)


def resample_to(x, height: int, width: int):
    """Bring a feature map to (height, width): max-pool down or nearest-resize up."""
    factor = x.shape[1] // height
    if factor > 1:
        return layers.MaxPooling2D(factor)(x)
    if x.shape[1] < height:
        return upsample_to(x, height, width)
    return x


def dense_unet(cfg: ModelConfig) -> keras.Model:
    """Seed 2's dense-skip U-Net: each decoder level sees every encoder level; Transformer + ASPP bottleneck."""
    h, w = TILE_SHAPE
    inp = keras.Input((h, w, 1), name="image")
    x, skips = inp, []
    for f in cfg.dense_widths:
        x = conv_bn(conv_bn(x, f, cfg), f, cfg)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = conv_bn(x, cfg.dense_bottleneck, cfg)
    x = transformer_block(x, heads=8, dropout=cfg.dropout)
    x = aspp(x, cfg.dense_bottleneck, cfg)
    for level in reversed(range(len(cfg.dense_widths))):
        th, tw = skips[level].shape[1:3]
        parts = [conv_bn(upsample_to(x, th, tw), cfg.dense_widths[level], cfg)]
        parts += [resample_to(s, th, tw) for s in skips]
        x = layers.Concatenate()(parts)
        f = cfg.dense_widths[level]
        x = conv_bn(conv_bn(x, f, cfg), f, cfg)
    out = layers.Conv2D(NUM_CLASSES, 1)(x)
    out = layers.Softmax(dtype="float32", name="probs")(out)
    return keras.Model(inp, out, name="dense_unet")


ARCHS = {"dual-unet": dual_unet, "dense-unet": dense_unet}


def build_model(cfg: ModelConfig) -> keras.Model:
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[cfg.arch](cfg)
