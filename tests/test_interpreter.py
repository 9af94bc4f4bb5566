import json

import numpy as np
import pytest
from marsseg.core import interpreter as it
from marsseg.core.metadata import load_metadata
from marsseg.core.tiling import Merger, TileGrid
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter

from tests.conftest import synthetic_frames


def test_tiny_model_is_full_integer(tiny_model):
    interp = it.make_interpreter(tiny_model)
    assert it.input_info(interp).dtype == np.int8
    assert it.output_info(interp).dtype == np.int8
    assert it.float_tensors_in_ops(it.make_interpreter(tiny_model, delegates=False)) == []


def test_output_is_dequantized_with_scale_and_zero_point(tiny_model):
    m = TileModel(tiny_model)
    frames, _ = synthetic_frames(n=3)
    probs = m.predict(frames[:, :64].copy())
    raw = m.interp.get_tensor(it.output_info(m.interp).index)
    q = m.meta.output_quant
    np.testing.assert_allclose(probs, (raw.astype(np.float32) - q.zero_point) * q.scale, rtol=1e-6)
    assert probs.min() >= 0 and abs(probs.sum(-1).mean() - 1) < 0.05  # softmax survives quantization
    assert q.zero_point == -128  # int8 softmax output: a uint8 cast would have mangled it


def test_input_quantization_matches_metadata(tiny_model):
    m = TileModel(tiny_model)
    tiles = np.array([[[0, 128, 255]]], np.uint8).repeat(64, 1).repeat(43, 2)[:, :, :128]
    m.predict(tiles)
    q = m.meta.input_quant
    expected = np.clip(np.rint(tiles / 255.0 / q.scale) + q.zero_point, -128, 127)
    np.testing.assert_array_equal(m._in[..., 0], expected)


def test_batch_resize_once_per_size(tiny_model, monkeypatch):
    m = TileModel(tiny_model)
    calls = []
    real = it.resize_batch
    monkeypatch.setattr(it, "resize_batch", lambda interp, n: (calls.append(n), real(interp, n)))
    tiles = np.zeros((4, 64, 128), np.uint8)
    for _ in range(3):
        m.predict(tiles)
    m.predict(tiles[:2])
    assert calls == [4, 2]


def test_wrong_tile_shape_rejected(tiny_model):
    with pytest.raises(ValueError, match=r"expected uint8 tiles \(N, 64, 128\)"):
        TileModel(tiny_model).predict(np.zeros((1, 32, 32), np.uint8))


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(it.ModelError, match="not found"):
        it.make_interpreter(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(it.ModelError, match="not a loadable TFLite model"):
        it.make_interpreter(bad)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model_sha256", "0" * 64, "sha256"),
        ("tile_shape", [32, 128], "input tile"),
        ("output_quant", {"dtype": "int8", "scale": 0.5, "zero_point": 0}, "output int8 scale"),
        ("classes", [{"id": 0, "name": "x", "colour": [0, 0, 0], "cost": None}], "output classes"),
    ],
)
def test_metadata_mismatch_is_a_startup_error(tiny_model, key, value, message):
    path = tiny_model.with_suffix(".json")
    d = json.loads(path.read_text())
    d[key] = value
    path.write_text(json.dumps(d))
    with pytest.raises(it.ModelError, match=message):
        TileModel(tiny_model)


def test_missing_or_garbled_metadata(tiny_model):
    path = tiny_model.with_suffix(".json")
    path.write_text("{not json")
    with pytest.raises(it.ModelError, match="unreadable model metadata"):
        load_metadata(path)
    path.unlink()
    with pytest.raises(it.ModelError, match="metadata not found"):
        TileModel(tiny_model)


@pytest.mark.parametrize("shape", [(128, 128), (37, 301), (10, 10), (480, 640)])
def test_segmenter_any_frame_size(tiny_model, shape):
    seg = Segmenter(TileModel(tiny_model), overlap=0.25)
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = seg(frame)
    assert out.mask.shape == shape and out.mask.dtype == np.uint8 and out.mask.max() < 5
    assert out.confidence.shape == shape and 0 < out.confidence.min() <= out.confidence.max() <= 1.01


def test_overlap_blending_matches_single_tile_on_exact_fit(tiny_model):
    """On a frame that is exactly one tile, blending must give the model's own argmax."""
    m = TileModel(tiny_model)
    frame = synthetic_frames(n=1)[0][0][:64]
    direct = m.predict(frame[None].copy())[0].argmax(-1)
    np.testing.assert_array_equal(Segmenter(m, 0.5)(frame).mask, direct)


@pytest.mark.parametrize("shape, overlap", [((64, 256), 0.0), ((150, 333), 0.25)])
def test_flip_average_blends_the_mean_of_each_tile_and_its_mirror_image(tiny_model, shape, overlap):
    """`flip`: every tile's answer is averaged with the answer to its mirror image, mirrored back, before blending;
    pasted (overlap 0, whole tiles) and weighted alike. The reference blends dequantized probabilities."""
    m = TileModel(tiny_model)
    seg = Segmenter(m, overlap, flip=True)
    frame = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    grid = TileGrid(shape, m.tile_shape, seg.overlap)
    tiles = grid.extract(frame)
    mean = (m.predict(tiles).copy() + m.predict(tiles[:, :, ::-1].copy())[:, :, ::-1]) / 2
    blend = Merger(grid, mean.shape[-1]).merge(mean)
    out = seg(frame)
    assert (out.mask == blend.argmax(-1)).mean() > 0.999  # int8 sums vs float: only exact near-ties may differ
    np.testing.assert_allclose(out.confidence, blend.max(-1), atol=1e-5)
    assert (out.mask != Segmenter(m, overlap)(frame).mask).any()  # the mirror's answers did count
    first = out.mask.copy()
    seg(frame[::-1].copy())  # the next frame reuses the buffers and carries nothing over
    np.testing.assert_array_equal(seg(frame).mask, first)


def test_failed_resize_leaves_model_usable(tiny_model, monkeypatch):
    """A frame too big to allocate must not leave the interpreter half-resized for the frames after it."""
    tiles = np.random.default_rng(0).integers(0, 256, (3, 64, 128), dtype=np.uint8)
    clean = TileModel(tiny_model).predict(tiles).copy()
    m = TileModel(tiny_model)
    m.predict(tiles[:2])
    real = it.resize_batch

    def out_of_memory(interp, n):
        interp.resize_tensor_input(it.input_info(interp).index, [n, 64, 128, 1])  # shape changed, then it fails
        raise MemoryError

    monkeypatch.setattr(it, "resize_batch", out_of_memory)
    with pytest.raises(MemoryError):
        m.predict(np.zeros((10375, 64, 128), np.uint8))
    monkeypatch.setattr(it, "resize_batch", real)
    np.testing.assert_array_equal(m.predict(tiles), clean)  # same as a model that never saw the failure
    np.testing.assert_array_equal(m.predict(tiles[:2]), clean[:2])
