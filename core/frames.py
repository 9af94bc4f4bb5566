"""Frames files (`.npz`): the one loader training, evaluation, the asset tools and the runtime's npz source share.

Two formats load into one in-memory form, `Dataset(frames uint8 (N,H,W), masks uint8 (N,H,W) or None, names)`:
- the AI4Mars frames file: `frames` (N,H,W) uint8, `masks` (N,H,W) class ids, optional `names`;
- the course file `mars_for_students.npz`: `training_set` (N,2,H,W) with image and mask, floats or uint8.
Float pixels in [0, 1] or [0, 255] become uint8; masks must be whole class ids. Every fault is one
`DataError` line naming the key and what was found.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from marsseg.core.spec import NUM_CLASSES

DATA_ENV = "MARSSEG_DATA"


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the key/shape at fault."""


@dataclass
class Dataset:
    frames: np.ndarray  # uint8 (N, H, W)
    masks: np.ndarray | None  # uint8 (N, H, W), class ids; None in a file of frames alone
    names: np.ndarray  # str (N,)

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.frames[idx], None if self.masks is None else self.masks[idx], self.names[idx])


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The data file from the option, else $MARSSEG_DATA; a clear error when neither names a file."""
    chosen = str(path) if path else os.environ.get(DATA_ENV, "")
    if not chosen:
        raise DataError(f"no data file given: pass --data FILE.npz or set {DATA_ENV}")
    p = Path(chosen)
    if not p.is_file():
        raise DataError(f"data file not found: {p} (pass --data FILE.npz or set {DATA_ENV})")
    return p


def _as_uint8_image(a: np.ndarray, key: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{key}: expected uint8 or float pixels, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"{key}: contains NaN or infinite pixel values")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 255:
        raise DataError(f"{key}: pixel values must be in [0, 1] or [0, 255], got [{lo:g}, {hi:g}]")
    if hi <= 1.0:
        a = a * 255.0
    return np.rint(a).astype(np.uint8)


def _as_mask(a: np.ndarray, key: str) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or not np.all(a == np.rint(a)):
            raise DataError(f"{key}: mask values must be whole class ids, found non-integers")
    elif not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{key}: expected integer class ids, got dtype {a.dtype}")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi >= NUM_CLASSES:
        raise DataError(f"{key}: class ids must be in [0, {NUM_CLASSES - 1}], got [{lo:g}, {hi:g}]")
    return a.astype(np.uint8)


def _check_shapes(frames: np.ndarray, masks: np.ndarray | None, fkey: str, mkey: str) -> None:
    if frames.ndim != 3:
        raise DataError(f"{fkey}: expected shape (N, H, W), got {frames.shape}")
    if frames.shape[0] == 0:
        raise DataError(f"{fkey}: no samples")
    if masks is not None and len(masks) != len(frames):
        raise DataError(f"{len(masks)} {mkey} for {len(frames)} {fkey}; the file is inconsistent (one mask per image)")
    if masks is not None and frames.shape != masks.shape:
        raise DataError(f"{fkey} shape {frames.shape} and {mkey} shape {masks.shape} must match (one mask per image)")


def load_frames(path: str | os.PathLike, labelled: bool = True, names_file: str | os.PathLike | None = None) -> Dataset:
    """Load and validate a frames file of either format; `labelled=False` also accepts frames without masks;
    `names_file` keeps only the frames it lists (`select_names`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"frames file not found: {path}; check the path")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable frames .npz ({e}); re-copy the file or check how it was "
                        "written") from e
    try:
        with npz:
            keys = set(npz.files)
            if "frames" in keys and ("masks" in keys or not labelled):
                frames = _as_uint8_image(npz["frames"], "frames")
                masks = _as_mask(npz["masks"], "masks") if "masks" in keys else None
                _check_shapes(frames, masks, "frames", "masks")
                names = npz["names"].astype(str) if "names" in keys else None
            elif "training_set" in keys:
                ts = npz["training_set"]
                if ts.ndim != 4 or ts.shape[1] != 2:
                    raise DataError(f"training_set: expected shape (N, 2, H, W) (image, mask), got {ts.shape}")
                frames = _as_uint8_image(ts[:, 0], "training_set[:, 0] (images)")
                masks = _as_mask(ts[:, 1], "training_set[:, 1] (masks)")
                _check_shapes(frames, masks, "training_set[:, 0]", "training_set[:, 1]")
                names = None
            else:
                wanted = "'frames' and 'masks'" if labelled else "'frames' (masks optional)"
                raise DataError(f"{path}: expected arrays {wanted}, or 'training_set'; found {sorted(keys)}")
    except (OSError, zipfile.BadZipFile, EOFError) as e:  # an array that does not decompress
        raise DataError(f"{path}: not a readable frames .npz ({e}); re-copy the file or check how it was "
                        "written") from e
    if names is None:
        names = np.array([f"{path.stem}-{i:05d}" for i in range(len(frames))])
    elif names.shape != (len(frames),):
        raise DataError(f"{len(names)} names for {len(frames)} frames; the file is inconsistent")
    ds = Dataset(frames, masks, names)
    return select_names(ds, names_file) if names_file else ds


def select_names(ds: Dataset, names_file: str | os.PathLike) -> Dataset:
    """The frames a names file lists: a JSON list of names, or a run's split.json (its `val_names`)."""
    try:
        d = json.loads(Path(names_file).read_text())
        wanted = set(d["val_names"] if isinstance(d, dict) else d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{names_file}: expected a JSON list of frame names or a split.json ({e})") from e
    return keep_names(ds, wanted, str(names_file))


def keep_names(ds: Dataset, wanted: set[str], listed_in: str, all_needed: bool = False) -> Dataset:
    """The frames named in `wanted` (listed in `listed_in`, for messages), in the file's order; with `all_needed`
    (a run's own validation frames) a missing one is an error rather than a smaller set."""
    keep = np.flatnonzero([n in wanted for n in ds.names])
    if all_needed and len(keep) != len(wanted):
        raise DataError(f"{len(wanted) - len(keep)} of the {len(wanted)} frames listed in {listed_in} are missing "
                        "from the frames file; pass the file they came from")
    if not len(keep):
        raise DataError(f"none of the names in {listed_in} are in the frames file")
    return ds.subset(keep)
