import numpy as np
import pytest
from marsseg.core import frames as F
from marsseg.train import data as D

from tests.conftest import synthetic_frames


def test_loads_frames_format(frames_file):
    ds = D.load_dataset(frames_file)
    assert ds.frames.shape == (24, 128, 128) and ds.frames.dtype == np.uint8
    assert ds.names[0] == "f000"


@pytest.mark.parametrize("as_float", [True, False])
def test_loads_course_format(tmp_path, as_float):
    frames, masks = synthetic_frames(n=6, h=64)
    ts = np.stack([frames, masks], axis=1)
    if as_float:
        ts = ts.astype(np.float32)
        ts[:, 0] /= 255.0
    path = tmp_path / "mars_for_students.npz"
    np.savez(path, training_set=ts, test_set=frames)
    ds = D.load_dataset(path)
    assert ds.frames.shape == (6, 64, 128)
    np.testing.assert_array_equal(ds.masks, masks)
    assert np.abs(ds.frames.astype(int) - frames).max() <= 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"frames": np.zeros((2, 128, 128), np.uint8), "masks": np.zeros((3, 128, 128), np.uint8)}, "3 masks for 2"),
        ({"frames": np.zeros((2, 128, 128), np.uint8), "masks": np.full((2, 128, 128), 7, np.uint8)}, r"\[0, 4\]"),
        ({"frames": np.zeros((2, 128, 100), np.uint8), "masks": np.zeros((2, 128, 100), np.uint8)}, "128 wide"),
        ({"training_set": np.zeros((2, 3, 64, 128))}, r"\(N, 2, H, W\)"),
        ({"images": np.zeros(3)}, "expected arrays"),
        ({"frames": np.full((1, 128, 128), 300.0), "masks": np.zeros((1, 128, 128))}, "pixel values"),
        ({"frames": np.zeros((1, 128, 128)), "masks": np.full((1, 128, 128), 1.5)}, "whole class ids"),
    ],
)
def test_validation_errors_name_the_fault(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(F.DataError, match=message):
        D.load_dataset(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(F.DataError, match="not a readable"):
        D.load_dataset(path)


def test_names_select_frames_in_file_order(tmp_path, frames_file):
    ds = D.load_dataset(frames_file)
    listed = tmp_path / "names.json"
    listed.write_text('["f003", "f001", "nope"]')
    assert list(F.select_names(ds, listed).names) == ["f001", "f003"]  # a list may name frames the file lacks
    with pytest.raises(F.DataError, match="1 of the 3 frames listed in a split are missing"):  # a run's split may not
        F.keep_names(ds, {"f003", "f001", "nope"}, "a split", all_needed=True)
    listed.write_text('["nope"]')
    with pytest.raises(F.DataError, match="none of the names"):
        F.select_names(ds, listed)


def test_resolve_data_path(monkeypatch, frames_file):
    monkeypatch.delenv(F.DATA_ENV, raising=False)
    with pytest.raises(F.DataError, match="MARSSEG_DATA"):
        F.resolve_data_path(None)
    monkeypatch.setenv(F.DATA_ENV, str(frames_file))
    assert F.resolve_data_path(None) == frames_file


def test_cleaning_drops_repeated_alien_mask_and_unlabelled():
    frames, masks = synthetic_frames(n=30)
    alien = np.full((128, 128), 2, np.uint8)
    alien[40:80, 40:80] = 4
    masks[:12] = alien  # 12 different images carrying one identical mask
    masks[12] = 0  # nothing labelled
    masks[13] = masks[14]
    frames[13] = frames[14]  # an exact duplicate pair is not an outlier pattern
    ds = D.Dataset(frames, masks, np.array([f"n{i}" for i in range(30)]))
    cleaned, report = D.clean(ds, min_repeats=10)
    assert len(cleaned) == 30 - 13 == report.kept
    assert report.dropped_outlier == [f"n{i}" for i in range(12)]
    assert report.dropped_unlabelled == ["n12"]
    assert report.outlier_patterns[0]["count"] == 12


def test_split_by_frame_is_deterministic_disjoint_and_stratified():
    frames, masks = synthetic_frames(n=40)
    ds = D.Dataset(frames, masks, np.arange(40).astype(str))
    tr, va = D.split_by_frame(ds, 0.25, seed=3)
    tr2, va2 = D.split_by_frame(ds, 0.25, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert not set(tr) & set(va) and len(tr) + len(va) == 40
    rare = (masks == 4).any(axis=(1, 2))
    assert rare[tr].any() and rare[va].any()
    _, va3 = D.split_by_frame(ds, 0.25, seed=4)
    assert set(va3) != set(va)


def test_fixed_tiles_cover_frame_and_drop_unlabelled():
    frames, masks = synthetic_frames(n=3)
    masks[1, :64] = 0
    x, y = D.fixed_tiles(D.Dataset(frames, masks, np.arange(3).astype(str)))
    assert x.shape == (5, 64, 128)  # 3 frames x 2 tiles, minus one all-background tile
    assert (y != 0).any(axis=(1, 2)).all()


def test_random_tiles_are_crops_of_their_frames():
    frames, masks = synthetic_frames(n=4)
    ds = D.Dataset(frames, masks, np.arange(4).astype(str))
    x, y = D.random_tiles(ds, np.random.default_rng(0), per_frame=3, hflip=True, vflip=False)
    assert x.shape == (12, 64, 128) and y.shape == x.shape
    for i in range(12):
        f, m = frames[i // 3], masks[i // 3]
        found = any(
            (np.array_equal(x[i], f[o : o + 64]) and np.array_equal(y[i], m[o : o + 64]))
            or (np.array_equal(x[i], f[o : o + 64, ::-1]) and np.array_equal(y[i], m[o : o + 64, ::-1]))
            for o in range(65)
        )
        assert found


def test_photometric_is_a_monotone_exposure_change_per_tile():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 64, 128), dtype=np.uint8)
    assert np.array_equal(D.photometric(x, rng, 0.0), x)  # strength 0: identity
    out = D.photometric(x, rng, 0.3)
    assert out.dtype == np.uint8 and out.shape == x.shape
    for tile_in, tile_out in zip(x, out, strict=True):
        order = np.argsort(tile_in, axis=None, kind="stable")
        assert (np.diff(tile_out.ravel()[order].astype(int)) >= 0).all()  # brighter stays brighter
    means = out.reshape(16, -1).mean(axis=1)
    assert means.std() > 5  # tiles get different exposures, not one shared change


def test_class_weights_cap_and_background():
    masks = np.zeros((1, 10, 100), np.uint8)
    masks[0, :, :50] = 1
    masks[0, :, 50:90] = 2
    masks[0, :, 90:99] = 3
    masks[0, :, 99] = 4
    w = D.class_weights(masks, background_weight=0.0, cap=10.0)
    assert w[0] == 0.0
    assert w[1] == pytest.approx(1000 / (4 * 500))
    assert w[4] == 10.0  # 1000 / (4 * 10) = 25, capped
    assert D.class_weights(masks, 0.1, 10.0)[0] == pytest.approx(0.1)
