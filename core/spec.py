"""The facts every stage must agree on: classes, tile shape, preprocessing.

Training, export and the edge runtime all import these, so the three can never disagree. The runtime
still reads the values it needs from the exported model's metadata (written from this module), which is
how a model trained with other settings stays self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_SHAPE: tuple[int, int] = (64, 128)  # (height, width) of one model input tile
NUM_CLASSES = 5
BACKGROUND = 0  # unlabelled / unknown: sky, rover hardware, unlabelled terrain


@dataclass(frozen=True)
class TerrainClass:
    id: int
    name: str
    colour: tuple[int, int, int]  # RGB for overlays
    cost: float  # default traversal cost; inf = lethal, nan = unknown


CLASSES: tuple[TerrainClass, ...] = (
    TerrainClass(0, "background", (0, 0, 0), float("nan")),
    TerrainClass(1, "soil", (194, 144, 88), 1.0),
    TerrainClass(2, "bedrock", (120, 120, 200), 2.0),
    TerrainClass(3, "sand", (240, 220, 90), 5.0),
    TerrainClass(4, "big_rock", (220, 40, 40), float("inf")),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)

# Input normalisation: pixel / 255 -> [0, 1]. With this range the converter picks input scale 1/255 and
# zero point -128, so an int8 input is simply `pixel - 128`.
INPUT_SCALE = 1.0 / 255.0
INPUT_OFFSET = 0.0


def preprocess(tiles: np.ndarray) -> np.ndarray:
    """Map uint8 grayscale tiles (..., H, W) to the float32 model input (..., H, W, 1).

    The one normalisation used by training, calibration and the runtime's float path.
    """
    if tiles.dtype != np.uint8:
        raise TypeError(f"preprocess expects uint8 pixels, got {tiles.dtype}; convert images to uint8 first")
    out = tiles.astype(np.float32) * np.float32(INPUT_SCALE) + np.float32(INPUT_OFFSET)
    return out[..., None]


def exposure_lut(gamma: np.ndarray | float, gain: np.ndarray | float, offset: np.ndarray | float) -> np.ndarray:
    """uint8 lookup tables (..., 256) for a change of exposure: clip(((v/255) ** gamma * gain + offset) * 255).

    Shared by training's photometric augmentation and `marsseg-eval --exposure`, so the robustness figure
    measures the same kind of change the model was trained against. Arguments broadcast (one table per element).
    """
    v = np.linspace(0.0, 1.0, 256)
    g, k, o = (np.asarray(a, np.float64)[..., None] for a in (gamma, gain, offset))
    return np.clip(np.rint((v**g * k + o) * 255), 0, 255).astype(np.uint8)


MIN_LIFT_GAMMA = 0.5  # at most a square-root curve: a frame of sensor noise in the dark is not stretched into texture


def exposure_floor(tiles: np.ndarray) -> float:
    """The brightness (DN) of a typical input: the median of the tiles' mean pixel values.

    Measured on the calibration tiles at export (drawn from the training frames), so it says what the model
    learnt from, and the runtime can bring darker frames up to it (`lift_exposure`).
    """
    return float(np.median(tiles.reshape(len(tiles), -1).mean(axis=1)))


def lift_exposure(gray: np.ndarray, floor: float) -> np.ndarray:
    """A uint8 frame whose mean is below `floor` DN, brightened by a gamma curve that takes a pixel at the frame's
    mean to `floor`; a frame at or above it (or `floor` 0) is returned as it is.

    Why: the models learn underexposed frames from photometric augmentation, yet still lose points on them (the
    shadows' detail sits in a few grey levels); lifting them, as a camera's auto-exposure would have, recovers most
    of it (docs/robustness.md). Brighter frames are left alone: darkening them measured worse.
    """
    mean = float(gray.mean()) if gray.size else 0.0
    if floor <= 0 or mean >= floor or mean < 1:  # nothing to do, or a black frame with nothing to lift
        return gray
    gamma = max(np.log(floor / 255) / np.log(mean / 255), MIN_LIFT_GAMMA)
    return exposure_lut(gamma, 1.0, 0.0)[gray]
