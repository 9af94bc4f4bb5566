"""Build the committed calibration set: training-side tiles stratified by class content and brightness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from marsseg.core.frames import DataError
from marsseg.core.io import sha256_file, write_atomic
from marsseg.core.spec import NUM_CLASSES
from marsseg.train import data as D
from marsseg.train.config import DataConfig

BRIGHTNESS_BINS = 5


def select_calibration(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` tiles: every (rarest-class-present, brightness-quintile) stratum gets an equal share.

    Keying each tile by the rarest class it contains guarantees big rock and sand tiles are represented;
    brightness quintiles make the activation ranges cover dark and bright scenes alike.
    """
    rng = np.random.default_rng(seed)
    present = np.stack([(y == c).any(axis=(1, 2)) for c in range(NUM_CLASSES)], axis=1)
    freq = present.sum(axis=0)
    rarity = np.argsort(freq)  # rarest class first
    rarest = np.array([next(c for c in rarity if p[c]) for p in present])
    mean = x.reshape(len(x), -1).mean(axis=1)
    edges = np.quantile(mean, np.linspace(0, 1, BRIGHTNESS_BINS + 1)[1:-1])
    bright = np.searchsorted(edges, mean)
    strata = [np.flatnonzero((rarest == c) & (bright == b)) for c in range(NUM_CLASSES) for b in range(BRIGHTNESS_BINS)]
    strata = [s for s in strata if len(s)]
    chosen: list[int] = []
    share = n // len(strata)
    for s in strata:  # equal share; small strata give everything they have
        chosen += rng.choice(s, size=min(share, len(s)), replace=False).tolist()
    rest = np.setdiff1d(np.arange(len(x)), chosen)
    chosen += rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False).tolist()
    return np.sort(np.array(chosen))


def make_calibration(data: str, out: Path, n: int = 256, seed: int = 42, val_fraction: float = 0.2) -> dict:
    """Write `out` (.npz: tiles uint8 (n,64,128), names, provenance JSON) from the training side of the split."""
    prep = D.prepare(DataConfig(path=data, val_fraction=val_fraction, seed=seed))
    x, y = D.fixed_tiles(prep.train)
    if not 1 <= n <= len(x):
        raise DataError(f"--n {n}: the calibration set takes 1 to {len(x)} tiles (the training side of {prep.path})")
    idx = select_calibration(x, y, n, seed)
    counts = np.bincount(y[idx].ravel(), minlength=NUM_CLASSES)
    provenance = {
        "source": str(Path(prep.path).name), "source_sha256": sha256_file(prep.path),
        "split": {"seed": seed, "val_fraction": val_fraction, "side": "train"},
        "selection": f"{n} fixed-offset 64x128 tiles stratified by rarest class present x brightness quintile",
        "command": f"marsseg-export calibrate --data {Path(prep.path).name} --n {n} --seed {seed}",
        "pixel_class_counts": counts.tolist(),
        "tiles_with_class": [int((y[idx] == c).any(axis=(1, 2)).sum()) for c in range(NUM_CLASSES)],
        "brightness_range": [int(x[idx].min()), int(x[idx].max())],
    }
    write_atomic(out, lambda p: np.savez_compressed(p.open("wb"), tiles=x[idx], masks=y[idx],
                                                    provenance=json.dumps(provenance)))
    return provenance


def load_calibration(path: str | Path) -> np.ndarray:
    """uint8 tiles (N, 64, 128) from a calibration .npz; a clear error when the file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file not found: {path}; pass --calibration FILE or make it with "
                        f"`marsseg-export calibrate --data FRAMES.npz --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            tiles = z["tiles"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a calibration file with a 'tiles' array ({e})") from e
    if tiles.dtype != np.uint8 or tiles.ndim != 3 or len(tiles) == 0:
        raise DataError(f"{path}: 'tiles' must be non-empty uint8 (N, H, W), got {tiles.dtype} {tiles.shape}")
    return tiles
