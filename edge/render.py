"""Class masks to pictures: colour maps and overlays (OpenCV/NumPy only)."""

from __future__ import annotations

import numpy as np


def palette(colours: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """(C, 3) uint8 RGB lookup table, padded to 256 entries so any uint8 id indexes safely."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return lut


def colourize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 class mask (H, W) -> RGB (H, W, 3)."""
    return lut[mask]


def overlay(gray: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the class colours over the grayscale frame; background (id 0) stays the plain image."""
    base = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    colour = colourize(mask, lut).astype(np.float32)
    a = np.where(mask[..., None] == 0, 0.0, alpha).astype(np.float32)
    return np.rint(base * (1 - a) + colour * a).astype(np.uint8)
