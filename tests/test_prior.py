"""Logit adjustment: the offset search (pure NumPy) and folding the offsets into the model."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marsseg.train.config import ModelConfig  # noqa: E402
from marsseg.train.model import build_model  # noqa: E402
from marsseg.train.prior import adjust, choose_scale, fit_logit_bias, fold_logit_bias  # noqa: E402

TINY = ModelConfig(fine_widths=(4, 8, 8), bottleneck=8, coarse_widths=(8, 8), coarse_bottleneck=8)


def noisy_log_probs(y: np.ndarray, shift: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logits = 1.5 * np.eye(5, dtype=np.float32)[y] + rng.normal(0, 1, (*y.shape, 5)).astype(np.float32) + shift
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_search_undoes_a_systematic_shift_against_one_class():
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=(40, 16, 16), p=[0.1, 0.3, 0.3, 0.2, 0.1]).astype(np.uint8)
    shift = np.array([0, 0, -1.0, 0, 0], np.float32)  # bedrock under-predicted, as class weights do
    bias, before, after = fit_logit_bias(noisy_log_probs(y, shift, rng), y)
    assert after > before + 0.02
    assert bias[0] == 0  # background's offset is never touched
    assert bias[2] - np.mean(bias[[1, 3, 4]]) == pytest.approx(1.0, abs=0.3)


def test_search_leaves_a_calibrated_model_alone():
    rng = np.random.default_rng(1)
    y = rng.choice([1, 2, 3, 4], size=(40, 16, 16)).astype(np.uint8)
    bias, before, after = fit_logit_bias(noisy_log_probs(y, np.zeros(5, np.float32), rng), y)
    assert after >= before
    assert np.ptp(bias[1:]) <= 0.2  # terrain offsets move together at most (that only suppresses background)


def test_folded_bias_shifts_every_pixel_log_probability_by_the_offsets():
    model = build_model(TINY)
    x = np.random.default_rng(2).normal(size=(2, 64, 128, 1)).astype(np.float32)
    before = np.log(np.asarray(model.predict_on_batch(x), np.float64))
    bias = np.array([0, 0.3, -0.5, 1.0, 0.2], np.float32)
    fold_logit_bias(model, bias)
    after = np.log(np.asarray(model.predict_on_batch(x), np.float64))
    d = after - before - bias  # softmax renormalises: a per-pixel constant is all that may remain
    assert np.allclose(d, d[..., :1], atol=1e-4)


def test_fold_refuses_a_model_without_a_conv_before_the_softmax():
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Softmax(name="probs")(keras.layers.Dense(5)(inp))
    with pytest.raises(ValueError, match="biased Conv2D"):
        fold_logit_bias(keras.Model(inp, out), np.zeros(5, np.float32))


def test_adjust_reports_what_it_chose_on_training_tiles():
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (6, 64, 128), dtype=np.uint8)
    masks = rng.integers(1, 5, (6, 64, 128), dtype=np.uint8)
    done = adjust(build_model(TINY), (tiles, masks), (tiles[:2], masks[:2]), sample=4, seed=0)
    assert done["train_tiles"] == 4 and len(done["bias"]) == 5
    assert done["train_miou_after"] >= done["train_miou_before"]
    assert done["scale"] == 1.0 and done["bias"] == done["fitted_bias"] and "val_miou_by_scale" not in done


def test_adjust_keeps_the_scale_of_the_offsets_that_scores_best_on_validation():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(4)
    tiles = rng.integers(0, 256, (6, 64, 128), dtype=np.uint8)
    masks = rng.integers(1, 5, (6, 64, 128), dtype=np.uint8)
    done = adjust(build_model(TINY), (tiles, masks), (tiles[4:], masks[4:]), sample=4, seed=0, scales=(0, 0.5, 1))
    by_scale = done["val_miou_by_scale"]
    assert list(by_scale) == ["0", "0.5", "1"]
    # the kept scale scores the best (on an untrained model scales can tie; adjust keeps the first listed)
    assert by_scale[f"{done['scale']:g}"] == max(by_scale.values())
    np.testing.assert_allclose(done["bias"], done["scale"] * np.array(done["fitted_bias"]), atol=1e-4)


def test_adjust_writes_scale_zero_of_a_negative_offset_as_zero(monkeypatch):
    """0 × a negative offset is -0.0 in floating point; the record (and the model card quoting it) says 0.0."""
    monkeypatch.setattr("marsseg.train.prior.fit_logit_bias",
                        lambda logp, y: (np.array([0, 0.6, 1.1, 0.2, -0.3], np.float32), 0.5, 0.6))
    rng = np.random.default_rng(4)
    tiles = rng.integers(0, 256, (4, 64, 128), dtype=np.uint8)
    masks = rng.integers(1, 5, (4, 64, 128), dtype=np.uint8)
    done = adjust(build_model(TINY), (tiles, masks), (tiles, masks), sample=2, seed=0, scales=(0,))
    assert done["scale"] == 0 and done["fitted_bias"][-1] == -0.3
    assert done["bias"] == [0.0] * 5 and not np.signbit(done["bias"]).any()


def test_choose_scale_scores_each_multiple_of_the_offsets():
    y = np.array([1, 1, 2, 2], np.uint8)
    logp = np.log(np.array([[0, .6, .4, 0, 0]] * 4) + 1e-7)  # everything soil: pixel 2 and 3 are wrong
    bias = np.array([0, 0, 1.0, 0, 0], np.float32)  # +1 on bedrock flips them all to bedrock
    got = choose_scale(logp, y, bias, (0.0, 0.2, 1.0))
    assert got[0.0] == got[0.2] == pytest.approx(0.25)  # soil IoU 0.5, the others 0 (0.2 flips nothing)
    assert got[1.0] == pytest.approx(0.25)  # now bedrock 0.5 and soil 0
