import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marsseg.train.config import ModelConfig  # noqa: E402
from marsseg.train.losses import lovasz_softmax, make_loss  # noqa: E402
from marsseg.train.macs import count_macs  # noqa: E402
from marsseg.train.model import build_model  # noqa: E402


def test_default_dual_unet_size_and_compute_budget():
    m = build_model(ModelConfig())
    assert m.output_shape == (None, 64, 128, 5)
    assert 0.8e6 < m.count_params() < 1.2e6  # around the seed's ~0.95M parameters
    assert count_macs(m) <= 0.3e9  # the board budget per 64x128 tile
    assert m.layers[-1].name == "probs"


def test_dual_unet_uses_only_int8_friendly_layers():
    m = build_model(ModelConfig())
    kinds = {type(layer).__name__ for layer in m.layers}
    assert not kinds & {"UpSampling2D", "Conv2DTranspose"}
    assert {"Resizing", "Multiply", "Dropout", "Concatenate", "Add"} <= kinds


def test_dense_unet_builds():
    cfg = ModelConfig(arch="dense-unet", dense_widths=(8, 16, 32, 64), dense_bottleneck=64)
    m = build_model(cfg)
    assert m.output_shape == (None, 64, 128, 5)
    assert any(type(layer).__name__ == "MultiHeadAttention" for layer in m.layers)
    assert count_macs(m) > 0


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model(ModelConfig(arch="nope"))


def test_conv_mac_count_by_hand():
    inp = keras.Input((8, 16, 3))
    out = keras.layers.Conv2D(4, 3, padding="same")(inp)
    assert count_macs(keras.Model(inp, out)) == 8 * 16 * 9 * 3 * 4


@pytest.mark.parametrize(("name", "lovasz"), [("wce", 0), ("wce_dice", 0), ("dice_focal", 0), ("wce_dice", 0.5)])
def test_losses_ignore_zero_weight_class_and_reward_correct(name, lovasz):
    w = np.array([0, 1, 1, 1, 5], np.float32)
    loss = make_loss(name, w, lovasz=lovasz)
    y = np.array([[[1, 2, 0, 4]]])
    good = np.eye(5, dtype=np.float32)[[1, 2, 3, 4]][None, None] * 0.96 + 0.01
    bad = np.eye(5, dtype=np.float32)[[2, 3, 3, 1]][None, None] * 0.96 + 0.01
    lg = float(keras.ops.convert_to_numpy(loss(y, good)))
    assert lg < float(keras.ops.convert_to_numpy(loss(y, bad)))
    # the background-truth pixel (weight 0) does not change the loss whatever is predicted there
    other = good.copy()
    other[0, 0, 2] = np.eye(5, dtype=np.float32)[0] * 0.96 + 0.01
    assert float(keras.ops.convert_to_numpy(loss(y, other))) == pytest.approx(lg, rel=1e-5)


def test_lovasz_equals_jaccard_loss_on_hard_answers():
    """At one-hot answers the Lovász extension is the set function itself: mean over the classes present in the
    truth of 1 - IoU, background-truth pixels ignored whatever is predicted there."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, (2, 8, 16))
    y[y == 4] = 3  # big rock absent from the truth: left out of the mean although it is predicted
    pred = np.where(rng.random(y.shape) < 0.3, rng.integers(0, 5, y.shape), y)
    ious = [((y == k) & (pred == k)).sum() / ((y == k) | ((pred == k) & (y > 0))).sum() for k in (1, 2, 3)]
    loss = lovasz_softmax(np.array([0, 1, 1, 1, 5], np.float32))
    got = float(keras.ops.convert_to_numpy(loss(y, np.eye(5, dtype=np.float32)[pred])))
    assert got == pytest.approx(1 - np.mean(ious), abs=1e-4)
    assert float(keras.ops.convert_to_numpy(loss(y, np.eye(5, dtype=np.float32)[y]))) == pytest.approx(0, abs=1e-5)
