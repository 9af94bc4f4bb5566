"""Clean, split and tile the labelled rover frames (loaded by `marsseg.core.frames`) for training."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from marsseg.core.frames import DataError, Dataset, load_frames, resolve_data_path
from marsseg.core.spec import BACKGROUND, NUM_CLASSES, TILE_SHAPE, exposure_lut
from marsseg.train.config import DataConfig

log = logging.getLogger(__name__)

def load_dataset(path: str | os.PathLike) -> Dataset:
    """A labelled frames file (`marsseg.core.frames`) whose frames training can crop tiles from."""
    ds = load_frames(path)
    th, tw = TILE_SHAPE
    if ds.frames.shape[1] < th or ds.frames.shape[2] != tw:
        raise DataError(f"frames: training needs frames at least {th} high and exactly {tw} wide, got "
                        f"{ds.frames.shape[1:]}")
    return ds


@dataclass
class CleaningReport:
    kept: int
    dropped_outlier: list[str]  # names of samples sharing an outlier mask pattern
    dropped_unlabelled: list[str]
    outlier_patterns: list[dict]  # {mask_sha1, count, distinct_images}

    def as_dict(self) -> dict:
        return {
            "kept": self.kept,
            "dropped_outlier": len(self.dropped_outlier),
            "dropped_unlabelled": len(self.dropped_unlabelled),
            "outlier_patterns": self.outlier_patterns,
            "dropped_names": {"outlier": self.dropped_outlier, "unlabelled": self.dropped_unlabelled},
        }


def clean(ds: Dataset, min_repeats: int = 10) -> tuple[Dataset, CleaningReport]:
    """Drop known-bad samples, reporting each drop and why.

    Outlier pattern: one mask repeated on >= `min_repeats` samples whose images differ (the course data's
    ~110 "alien" samples). A real scene never gives the very same label map on different images, so the
    mask cannot describe those images. Samples with no labelled pixel teach nothing and are dropped too.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(ds.masks):
        groups[hashlib.sha1(m.tobytes()).hexdigest()].append(i)
    drop = np.zeros(len(ds), dtype=bool)
    patterns = []
    for digest, idx in groups.items():
        if len(idx) < min_repeats:
            continue
        distinct = len({hashlib.sha1(ds.frames[i].tobytes()).hexdigest() for i in idx})
        if distinct > 1:  # same labels on different pictures: the labels are not about the pictures
            drop[idx] = True
            patterns.append({"mask_sha1": digest, "count": len(idx), "distinct_images": distinct})
    outliers = list(ds.names[drop])
    unlabelled_mask = ~drop & ~(ds.masks != BACKGROUND).any(axis=(1, 2))
    unlabelled = list(ds.names[unlabelled_mask])
    keep = ~(drop | unlabelled_mask)
    for p in patterns:
        log.warning("dropping %d samples sharing outlier mask %s (%d different images)",
                    p["count"], p["mask_sha1"][:12], p["distinct_images"])
    if unlabelled:
        log.warning("dropping %d samples with no labelled pixel", len(unlabelled))
    report = CleaningReport(int(keep.sum()), outliers, unlabelled, patterns)
    return ds.subset(np.flatnonzero(keep)), report


def split_by_frame(ds: Dataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val frame indices, stratified on whether a frame contains big rock.

    Tiles are cut after the split, so no frame contributes tiles to both sides.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    has_rare = (ds.masks == NUM_CLASSES - 1).any(axis=(1, 2))
    train, val = [], []
    for stratum in (np.flatnonzero(has_rare), np.flatnonzero(~has_rare)):
        perm = rng.permutation(stratum)
        n_val = round(len(perm) * val_fraction)
        if len(perm) >= 2:
            n_val = min(max(n_val, 1), len(perm) - 1)  # both sides get some of every stratum
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass
class Prepared:
    """The frames a run trains and validates on, and where they came from."""

    path: Path
    cleaning: CleaningReport
    train: Dataset
    val: Dataset


def prepare(d: DataConfig, path: str | os.PathLike | None = None) -> Prepared:
    """Load, clean and split by frame as a run's `data` section says (from `path` instead of `d.path` when given):
    what training, export, calibration and adjustment share."""
    path = resolve_data_path(path or d.path)
    ds = load_dataset(path)
    if d.limit_frames:
        ds = ds.subset(np.arange(min(d.limit_frames, len(ds))))
    ds, cleaning = clean(ds, d.outlier_min_repeats)
    train_idx, val_idx = split_by_frame(ds, d.val_fraction, d.seed)
    return Prepared(path, cleaning, ds.subset(train_idx), ds.subset(val_idx))


def camera_validation(val: Dataset, seed: int) -> np.ndarray:
    """The validation tiles through fixed random cameras (strength 1, seeded): robustness scored every epoch."""
    return fixed_tiles(Dataset(degrade(val.frames, np.random.default_rng(seed), 1.0)[0], val.masks, val.names))[0]


def fixed_tiles(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Validation tiles: evenly spaced vertical crops covering each frame; tiles with no label dropped."""
    from marsseg.core.tiling import axis_starts

    th = TILE_SHAPE[0]
    starts = axis_starts(ds.frames.shape[1], th, 0)
    x = np.concatenate([ds.frames[:, s : s + th] for s in starts])
    y = np.concatenate([ds.masks[:, s : s + th] for s in starts])
    labelled = (y != BACKGROUND).any(axis=(1, 2))
    return x[labelled], y[labelled]


def class_weights(masks: np.ndarray, background_weight: float, cap: float) -> np.ndarray:
    """Inverse pixel-frequency weights over terrain classes (balanced: total / (K * count)), capped.

    Background gets `background_weight` (0 = excluded from the loss). Classes absent from the data get
    the cap so they are not silently zero.
    """
    counts = np.bincount(masks.ravel(), minlength=NUM_CLASSES).astype(np.float64)
    terrain = np.arange(NUM_CLASSES) != BACKGROUND
    total = counts[terrain].sum()
    w = np.full(NUM_CLASSES, cap, dtype=np.float64)
    present = terrain & (counts > 0)
    w[present] = total / (terrain.sum() * counts[present])
    w = np.minimum(w, cap)
    w[BACKGROUND] = background_weight
    return w.astype(np.float32)


def random_tiles(
    ds: Dataset, rng: np.random.Generator, per_frame: int, hflip: bool, vflip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of training tiles: `per_frame` random vertical crops of every frame, randomly flipped."""
    th = TILE_SHAPE[0]
    n, h = ds.frames.shape[:2]  # frames may carry a trailing channel axis that is cropped and flipped alike
    frame_idx = np.repeat(np.arange(n), per_frame)
    offsets = rng.integers(0, h - th + 1, size=frame_idx.size)
    rows = offsets[:, None] + np.arange(th)[None, :]
    x = ds.frames[frame_idx[:, None], rows]
    y = ds.masks[frame_idx[:, None], rows]
    for axis, enabled in ((2, hflip), (1, vflip)):
        if enabled:
            flip = rng.random(frame_idx.size) < 0.5
            x[flip] = np.flip(x[flip], axis=axis)
            y[flip] = np.flip(y[flip], axis=axis)
    return x, y


def degrade(frames: np.ndarray, rng: np.random.Generator, strength: float,
            untouched: float = DataConfig.untouched) -> tuple[np.ndarray, np.ndarray]:
    """Each frame through its own random camera (`degrade.random_camera`: blur, motion, noise, resampling, JPEG...).

    Applied to whole frames before the tile crop, as a camera degrades the whole picture (a blur or a JPEG block
    at a tile's edge sees the pixels beyond it). Returns a new array (`frames` is left as it is) and which frames
    a camera changed (the others passed untouched).
    """
    from marsseg.core.degrade import random_camera

    views = list(frames)  # random_camera hands an untouched frame back as the same object
    out = [random_camera(f, rng, strength, untouched) for f in views]
    return np.stack(out), np.array([o is not f for o, f in zip(out, views, strict=True)])


def photometric(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random exposure per tile (gamma, gain, offset), so the model does not learn one camera's lighting.

    gamma and gain are exp(U(-s, s)), the offset U(-s/2, s/2) of full scale; applied as one lookup table per
    tile (`spec.exposure_lut`) to the uint8 tiles, before the shared preprocessing, as a real exposure change is.
    """
    n = len(x)
    gamma, gain = np.exp(rng.uniform(-strength, strength, size=(2, n)))
    lut = exposure_lut(gamma, gain, rng.uniform(-strength / 2, strength / 2, size=n))
    return lut[np.arange(n)[:, None, None], x]
