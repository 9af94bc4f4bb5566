"""Property-based tests of tile geometry and merging over arbitrary frame/tile sizes and overlaps."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from marsseg.core.tiling import Merger, TileGrid, axis_starts, blend_window


@st.composite
def grids(draw):
    th = draw(st.integers(1, 40))
    tw = draw(st.integers(1, 40))
    h = draw(st.integers(1, 150))  # includes frames smaller than a tile and odd sizes
    w = draw(st.integers(1, 150))
    oy = draw(st.integers(0, th - 1))
    ox = draw(st.integers(0, tw - 1))
    return TileGrid((h, w), (th, tw), (oy, ox))


@settings(max_examples=200, deadline=None)
@given(grids())
def test_every_pixel_covered_and_tiles_inside(grid):
    hp, wp = grid.padded_shape
    th, tw = grid.tile_shape
    covered = np.zeros((hp, wp), bool)
    for y, x in grid.boxes:
        assert y >= 0 and y + th <= hp and x >= 0 and x + tw <= wp
        covered[y : y + th, x : x + tw] = True
    assert covered.all()


@settings(max_examples=200, deadline=None)
@given(grids())
def test_requested_overlap_is_respected(grid):
    for axis in (0, 1):
        starts = sorted({b[axis] for b in grid.boxes})
        steps = np.diff(starts)
        assert (steps <= grid.tile_shape[axis] - grid.overlap[axis]).all()


@settings(max_examples=150, deadline=None)
@given(grids(), st.integers(0, 2**31 - 1))
def test_identity_model_reassembles_input_exactly(grid, seed):
    frame = np.random.default_rng(seed).integers(0, 256, grid.frame_shape, dtype=np.uint8)
    tiles = grid.extract(frame).astype(np.float32)[..., None]  # identity "model": prediction = input
    out = Merger(grid, 1).merge(tiles)
    assert out.shape == (*grid.frame_shape, 1)
    np.testing.assert_allclose(out[..., 0], frame, atol=1e-3)
    np.testing.assert_array_equal(np.rint(out[..., 0]).astype(np.uint8), frame)


@settings(max_examples=100, deadline=None)
@given(grids(), st.integers(0, 2**31 - 1))
def test_reassembly_independent_of_tile_order(grid, seed):
    rng = np.random.default_rng(seed)
    tiles = rng.random((len(grid), *grid.tile_shape, 3), dtype=np.float32)
    a = Merger(grid, 3).merge(tiles).copy()
    m = Merger(grid, 3)
    m.reset()
    for i in rng.permutation(len(grid)):
        m.add(int(i), tiles[i])
    np.testing.assert_allclose(m.result(), a, rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(grids(), st.floats(-5, 5, allow_nan=False))
def test_constant_prediction_reassembles_to_constant(grid, value):
    tiles = np.full((len(grid), *grid.tile_shape, 2), value, np.float32)
    out = Merger(grid, 2).merge(tiles)
    np.testing.assert_allclose(out, value, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(grids())
def test_blend_weights_positive_everywhere(grid):
    assert (blend_window(grid.tile_shape) > 0).all()
    assert (Merger(grid, 1).weights > 0).all()


def test_buffers_are_reused_across_frames():
    grid = TileGrid((100, 300), (64, 128), (16, 32))
    m = Merger(grid, 5)
    a = m.merge(np.ones((len(grid), 64, 128, 5), np.float32))
    b = m.merge(np.zeros((len(grid), 64, 128, 5), np.float32))
    assert np.shares_memory(a, b) and (b == 0).all()


def test_small_frame_is_reflect_padded_and_cropped_back():
    grid = TileGrid((10, 20), (64, 128))
    frame = np.arange(200, dtype=np.uint8).reshape(10, 20)
    (tile,) = grid.extract(frame)
    assert tile.shape == (64, 128)
    np.testing.assert_array_equal(tile[:10, :20], frame)
    np.testing.assert_array_equal(tile[10:20, :20], frame[::-1])  # symmetric reflection


def test_axis_starts_examples():
    assert axis_starts(128, 64, 0) == (0, 64)
    assert axis_starts(64, 64, 0) == (0,)
    assert axis_starts(480, 64, 16) == tuple(round(i * 416 / 9) for i in range(10))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_tiles_that_do_not_overlap_are_pasted_as_the_blend_would_weigh_them(rows, cols, th, tw, seed):
    """A frame of whole tiles at overlap 0: each pixel has one tile, so pasting equals the weighted blend."""
    grid = TileGrid((rows * th, cols * tw), (th, tw), (0, 0))
    tiles = np.random.default_rng(seed).random((len(grid), th, tw, 3), dtype=np.float32)
    fast, blended = Merger(grid, 3), Merger(grid, 3)
    assert fast.disjoint
    blended.disjoint = False  # the general path, for reference
    out = fast.merge(tiles).copy()
    np.testing.assert_allclose(out, blended.merge(tiles), rtol=1e-6)
    fast.merge(np.zeros_like(tiles))  # another frame in between: nothing of it stays behind
    np.testing.assert_array_equal(fast.merge(tiles), out)
    assert not Merger(TileGrid((64, 200), (64, 128), (0, 0)), 1).disjoint  # 200 px take two overlapping tiles


@settings(max_examples=150, deadline=None)
@given(grids(), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_decision_is_argmax_and_max_of_the_blend(grid, channels, seed):
    """Raw int8 tiles (many ties: 9 levels) decided in place equal NumPy's argmax (first of equals) and max of the
    dequantized float blend."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(-128, -119, (len(grid), *grid.tile_shape, channels)).astype(np.int8)
    scale, zero_point = 1 / 256, -128
    probs = (raw.astype(np.float32) - zero_point) * scale
    reference = Merger(grid, channels).merge(probs)
    merger = Merger(grid, channels)
    merger.accumulate(raw)
    mask, confidence = np.empty(grid.frame_shape, np.uint8), np.empty(grid.frame_shape, np.float32)
    merger.decide(mask, confidence, scale, zero_point)
    np.testing.assert_allclose(confidence, reference.max(-1), rtol=1e-5, atol=1e-6)
    if merger.disjoint:  # pasted: exact ties stay exact
        np.testing.assert_array_equal(mask, reference.argmax(-1))
    else:  # blended sums may round differently from the reference's; the chosen class is a maximum all the same
        chosen = np.take_along_axis(reference, mask[..., None].astype(np.intp), -1)[..., 0]
        np.testing.assert_allclose(chosen, reference.max(-1), rtol=1e-5, atol=1e-6)
