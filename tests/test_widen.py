"""widen.transfer_weights: a narrower trained model grows into a wider one that answers the same, and then learns."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marsseg.train.config import ModelConfig  # noqa: E402
from marsseg.train.model import build_model  # noqa: E402
from marsseg.train.widen import WidenError, transfer_weights  # noqa: E402

NARROW = dict(fine_widths=(4, 8, 8), bottleneck=8, coarse_widths=(8, 8), coarse_bottleneck=8, se_ratio=2)
WIDE = dict(fine_widths=(6, 12, 12), bottleneck=12, coarse_widths=(12, 12), coarse_bottleneck=12, se_ratio=2)


def _trained_like(cfg: dict) -> keras.Model:
    """A model whose every weight, batch-norm statistics included, is random (as after training, not as initialised)."""
    keras.utils.set_random_seed(3)
    m = build_model(ModelConfig(**cfg))
    rng = np.random.default_rng(4)
    m.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in v.path
                   else rng.normal(0, 0.3, w.shape).astype("float32") for v, w in zip(m.weights, m.get_weights(),
                                                                                     strict=True)])
    return m


@pytest.fixture(scope="module")
def narrow():
    return _trained_like(NARROW)


def test_widened_model_answers_as_its_source(narrow):
    wide = build_model(ModelConfig(**WIDE))
    assert wide.count_params() > narrow.count_params()
    assert transfer_weights(narrow, wide)
    x = np.random.default_rng(5).uniform(0, 1, (4, 64, 128, 1)).astype("float32")
    np.testing.assert_allclose(wide.predict(x, verbose=0), narrow.predict(x, verbose=0), atol=1e-5)
    first = next(layer for layer in wide.layers if isinstance(layer, keras.layers.Conv2D))
    src = next(layer for layer in narrow.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(first.kernel.numpy()[..., :4], src.kernel.numpy())  # leading channels: the source
    assert np.abs(first.kernel.numpy()[..., 4:]).sum() > 0  # new channels: freshly initialised, not zero


def test_new_channels_learn(narrow):
    """Zero wiring keeps the function, not the channels out of training: one step moves the zeroed weights."""
    wide = build_model(ModelConfig(**WIDE))
    transfer_weights(narrow, wide)
    head = wide.layers[-2]  # the 1x1 conv reading both branches' (widened) channels
    new = [4, 5, 10, 11]  # each branch's 6 channels: the source's 4, then 2 new
    assert not head.kernel.numpy()[:, :, new].any() and head.kernel.numpy()[:, :, [0, 6]].all()
    wide.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(6)
    wide.train_on_batch(rng.uniform(0, 1, (4, 64, 128, 1)).astype("float32"), rng.integers(0, 5, (4, 64, 128)))
    assert head.kernel.numpy()[:, :, new].all()


def test_same_widths_copy_and_mismatches_are_refused(narrow):
    twin = build_model(ModelConfig(**NARROW))
    assert not transfer_weights(narrow, twin)
    for a, b in zip(twin.get_weights(), narrow.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WidenError, match="at least the start model's"):
        transfer_weights(narrow, build_model(ModelConfig(fine_widths=(3, 6, 6), bottleneck=6, coarse_widths=(6, 6),
                                                         coarse_bottleneck=6, se_ratio=2)))
    with pytest.raises(WidenError, match="different layers"):  # a projection shortcut where the source had none
        transfer_weights(narrow, build_model(ModelConfig(**{**NARROW, "fine_widths": (4, 8, 12)})))
    with pytest.raises(WidenError, match="different layers"):
        transfer_weights(narrow, build_model(ModelConfig(arch="dense-unet", dense_widths=(8, 8, 8, 8),
                                                         dense_bottleneck=8)))
