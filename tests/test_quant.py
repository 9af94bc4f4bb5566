"""Quantization-aware fine-tuning: which tensors get rounded, weight sharing, and the rounding itself."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402
from marsseg.train import quant  # noqa: E402


def small_model() -> keras.Model:
    inp = keras.Input((8, 8, 1))
    a = layers.ReLU(name="a_relu")(layers.BatchNormalization(name="a_bn")(layers.Conv2D(4, 3, padding="same",
                                                                                        name="a_conv")(inp)))
    b = layers.BatchNormalization(name="b_bn")(layers.Conv2D(4, 3, padding="same", name="b_conv")(a))
    r = layers.ReLU(name="res_relu")(layers.Add(name="res_add")([a, b]))
    p = layers.MaxPooling2D(2, name="pool")(r)
    u = layers.Resizing(8, 8, interpolation="nearest", name="up")(p)
    x = layers.Concatenate(name="cat")([u, a])
    logits = layers.Conv2D(3, 1, name="logits")(x)
    return keras.Model(inp, layers.Softmax(name="probs")(logits))


def test_int8_tensors_are_those_the_converter_keeps_after_fusing():
    # conv+BN+ReLU fuse into one op, as do add+ReLU; the BN output that feeds the add is its own tensor;
    # pooling, nearest resizing and the fixed-scale softmax output keep a scale they are given
    assert quant.int8_tensors(small_model()) == {"a_relu", "b_bn", "res_relu", "cat", "logits"}
    assert sorted(quant.consumers(small_model())["a_relu"]) == ["b_conv", "cat", "res_add"]


def test_fake_quant_model_shares_the_weights_and_leaves_the_plain_model_alone():
    model = small_model()
    wrapped = quant.with_fake_quant(model)
    assert {id(v) for v in wrapped.trainable_variables} == {id(v) for v in model.trainable_variables}
    assert sorted(layer.name for layer in wrapped.layers if isinstance(layer, quant.FakeQuant)) == sorted(
        f"{n}_fq" for n in quant.int8_tensors(model))
    assert not any(isinstance(layer, quant.FakeQuant) for layer in model.layers)  # what the checkpoint saves
    assert quant.int8_tensors(model) == quant.int8_tensors(small_model())  # the wrapper's nodes are not model's
    model.layers[1].kernel.assign(np.ones((3, 3, 1, 4), np.float32))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(wrapped.layers[1].kernel), 1.0)


def test_fake_quant_rounds_to_256_levels_of_the_running_range():
    fq = quant.FakeQuant(momentum=0.5)
    x = np.linspace(-1.0, 3.0, 1000, dtype=np.float32).reshape(1, 10, 100, 1)
    first = keras.ops.convert_to_numpy(fq(x, training=True))
    assert float(fq.lo.numpy()) == pytest.approx(-1.0) and float(fq.hi.numpy()) == pytest.approx(3.0)
    assert len(np.unique(first)) <= 256
    assert np.abs(first - x).max() <= 4.0 / 255 / 2 + 1e-6  # half a step
    fq(2 * x, training=True)  # the range then follows a moving average of the batches' ranges
    assert float(fq.lo.numpy()) == pytest.approx(-1.5) and float(fq.hi.numpy()) == pytest.approx(4.5)
    out = keras.ops.convert_to_numpy(fq(10 * x))  # inference clips to the range (nudged so 0 is a level)
    step = 6.0 / 255
    assert -1.5 - step < out.min() < -1.5 + step and 4.5 - step < out.max() < 4.5 + step
    np.testing.assert_allclose(fq.lo.numpy(), -1.5)  # and does not move it


def test_gradient_passes_straight_through_inside_the_range():
    tf = pytest.importorskip("tensorflow")
    fq = quant.FakeQuant()
    fq(tf.constant([[-1.0, 1.0]]), training=True)
    x = tf.Variable([[-2.0, -0.3, 0.4, 2.0]])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(fq(x))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[0.0, 1.0, 1.0, 0.0]])
