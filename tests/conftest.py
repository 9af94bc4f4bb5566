"""Shared fixtures: small synthetic data in both file formats, and the real data path when present."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("MARSSEG_DATA", REPO.parent / "shared" / "data" / "ai4mars-frames-128.npz"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_frames(n: int = 24, h: int = 128, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose label is a function of brightness bands, so a model can learn something."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    frames = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        rows = np.sort(rng.integers(0, h, size=3))
        masks[i, : rows[0]] = 0
        masks[i, rows[0] : rows[1]] = 1
        masks[i, rows[1] : rows[2]] = 2
        masks[i, rows[2] :] = 3
        if i % 4 == 0:
            y, x = rng.integers(8, h - 8), rng.integers(8, w - 8)
            masks[i, y - 6 : y + 6, x - 6 : x + 6] = 4
        frames[i] = np.clip(masks[i].astype(np.int16) * 50 + rng.integers(0, 20, (h, w)), 0, 255)
    return frames, masks


@pytest.fixture
def frames_file(tmp_path: Path) -> Path:
    frames, masks = synthetic_frames()
    path = tmp_path / "frames.npz"
    np.savez_compressed(path, frames=frames, masks=masks, names=np.array([f"f{i:03d}" for i in range(len(frames))]))
    return path


def import_blocker(packages: tuple[str, ...], modules: tuple[str, ...] = (), why: str = "absent here") -> str:
    """Python source that makes the interpreter running it act as if `packages` (top-level names) and `modules`
    (dotted prefixes) were not installed: for subprocesses proving code runs where they are missing."""
    return textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {packages!r} or name.startswith({modules!r}):
                    raise ModuleNotFoundError(f"{{name}} is blocked: {why}")
                return None

        sys.meta_path.insert(0, Block())
    """)


FIXTURES = REPO / "tests" / "fixtures"
TINY_MODEL = FIXTURES / "tiny_int8.tflite"


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A private copy of the tiny int8 model + metadata (tests may tamper with it)."""
    import shutil

    for suffix in (".tflite", ".json"):
        shutil.copy(TINY_MODEL.with_suffix(suffix), tmp_path / f"tiny_int8{suffix}")
    return tmp_path / "tiny_int8.tflite"
