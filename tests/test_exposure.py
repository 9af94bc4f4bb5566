"""The exposure floor: frames darker than the model's typical input are lifted before tiling (`spec.lift_exposure`)."""

import json

import numpy as np
import pytest
from marsseg.core.spec import MIN_LIFT_GAMMA, exposure_floor, lift_exposure
from marsseg.edge.config import ConfigError, EdgeConfig, validate
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter


def _frame(mean: float, seed: int = 0, shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, mean / 3, shape), 0, 255).astype(np.uint8)


def test_the_floor_is_the_median_tile_mean():
    tiles = np.stack([np.full((64, 128), v, np.uint8) for v in (10, 50, 200)])
    assert exposure_floor(tiles) == 50.0


@pytest.mark.parametrize("floor", [0.0, 40.0])
def test_a_frame_at_or_above_the_floor_or_a_floor_of_zero_is_left_alone(floor):
    frame = _frame(60)
    assert lift_exposure(frame, floor) is frame


def test_a_dark_frame_is_lifted_towards_the_floor_keeping_its_order_shape_and_dtype():
    frame = _frame(20)
    out = lift_exposure(frame, 60.0)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert 20 < frame.mean() + 20 < out.mean() <= 70  # most of the way up, not past it by much
    # a monotone curve: brighter stays brighter (ties may merge only at the top, never reorder)
    order = np.argsort(frame.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()
    assert lift_exposure(frame, 60.0).tobytes() == out.tobytes()  # deterministic


def test_the_lift_deepens_with_darkness():
    lifted = [lift_exposure(_frame(m), 60.0).astype(float).mean() - _frame(m).mean() for m in (50, 35, 20)]
    assert lifted[0] < lifted[1] < lifted[2]


def test_a_black_frame_stays_black_and_a_nearly_black_one_is_lifted_at_most_by_a_square_root():
    black = np.zeros((64, 64), np.uint8)
    assert lift_exposure(black, 60.0) is black
    dim = _frame(3)
    out = lift_exposure(dim, 60.0)
    v = dim.astype(float) / 255
    np.testing.assert_array_equal(out, np.rint(v**MIN_LIFT_GAMMA * 255).astype(np.uint8))


def test_the_segmenter_lifts_dark_frames_by_the_models_floor(tiny_model):
    meta_path = tiny_model.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["exposure_floor"] = 70.0
    meta_path.write_text(json.dumps(meta))
    m = TileModel(tiny_model)
    seg = Segmenter(m)
    assert seg.exposure_floor == 70.0
    dark = _frame(25, seed=3)
    got = seg(dark).mask.copy()
    assert seg.lifted == 1
    off = Segmenter(m, exposure_floor=0)
    np.testing.assert_array_equal(got, off(lift_exposure(dark, 70.0)).mask)
    assert (got != off(dark).mask).any()  # the lift changed the answer
    bright = _frame(120, seed=4)
    np.testing.assert_array_equal(seg(bright).mask, off(bright).mask)  # above the floor: untouched
    assert seg.lifted == 1 and off.lifted == 0


def test_models_exported_before_the_floor_run_without_it(tiny_model):
    assert "exposure_floor" not in json.loads(tiny_model.with_suffix(".json").read_text())
    assert Segmenter(TileModel(tiny_model)).exposure_floor == 0.0


@pytest.mark.parametrize("floor", [-1.0, 256.0])
def test_an_impossible_floor_is_refused(tiny_model, floor):
    with pytest.raises(ValueError, match="exposure floor must be a mean grey level"):
        Segmenter(TileModel(tiny_model), exposure_floor=floor)
    with pytest.raises(ConfigError, match=r"--exposure-floor must be in \[0, 255\]"):
        validate(EdgeConfig(source="demo", exposure_floor=floor))


def test_eval_measures_with_the_floor_asked_for_and_records_it(tmp_path, capsys):
    """`marsseg-eval --exposure-floor`: the same frames, darkened, score differently with the floor on and off; the
    report records which; a floor out of range is one line and exit 2."""
    from marsseg.edge.evaluate import main

    from tests.conftest import TINY_MODEL, synthetic_frames

    frames, masks = synthetic_frames(n=4)
    data = tmp_path / "dark.npz"
    np.savez(data, frames=(frames // 4).astype(np.uint8), masks=masks)
    reports = {}
    for floor in ("0", "90"):
        out = tmp_path / floor
        assert main([str(data), "--model", str(TINY_MODEL), "--overlap", "0.25", "--exposure-floor", floor,
                     "--corruptions", "dark", "--output", str(out)]) == 0
        reports[floor] = json.loads((out / "eval.json").read_text())
        assert reports[floor]["results"][0]["exposure_floor"] == float(floor)
        assert reports[floor]["corruptions"]["exposure_floor"] == float(floor)
    assert reports["0"]["results"][0]["confusion_matrix"] != reports["90"]["results"][0]["confusion_matrix"]
    capsys.readouterr()
    assert main([str(data), "--model", str(TINY_MODEL), "--exposure-floor", "300"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exposure floor must be a mean grey level in 0..255 DN" in err
