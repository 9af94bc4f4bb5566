"""Overlays: the table-driven blend equals the per-pixel blend it replaces, for every class and gray level."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from marsseg.edge.render import colourize, overlay, palette

LUT = palette([(0, 0, 0), (194, 144, 88), (120, 120, 200), (230, 210, 120), (200, 60, 60)])


def blended(gray: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """The definition: colour over gray with weight alpha, background (class 0) left plain."""
    base = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    a = np.where(mask[..., None] == 0, 0.0, alpha).astype(np.float32)
    return np.rint(base * (1 - a) + colourize(mask, LUT).astype(np.float32) * a).astype(np.uint8)


def test_every_class_and_gray_level():
    gray, mask = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))  # all 65,536 pairs
    out = overlay(gray, mask, LUT)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, blended(gray, mask, 0.45))
    np.testing.assert_array_equal(out[0], np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1))  # background


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_any_shape_and_alpha(h, w, alpha, seed):
    rng = np.random.default_rng(seed)
    gray, mask = rng.integers(0, 256, (h, w)).astype(np.uint8), rng.integers(0, 6, (h, w)).astype(np.uint8)
    np.testing.assert_array_equal(overlay(gray, mask, LUT, alpha), blended(gray, mask, alpha))
