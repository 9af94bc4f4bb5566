"""Regenerate the tiny int8 model fixture used by the edge tests (tests/fixtures/tiny_int8.*).

  python -m tools.make_test_model

Trains a tiny dual U-Net (widths 4/8/8) for 4 epochs on the suite's synthetic brightness-band frames
(tests/conftest.py: synthetic_frames) through the real training CLI, then exports it through the real
export CLI with those frames as calibration tiles. The result is a genuine full-integer model (~40 kB).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.conftest import synthetic_frames

TINY = ["--set", "fine_widths=[4,8,8]", "--set", "bottleneck=8", "--set", "coarse_widths=[8,8]",
        "--set", "coarse_bottleneck=8", "--set", "se_ratio=1"]


def train_and_export(work: Path, epochs: int = 4, calibration: np.ndarray | None = None) -> tuple[int, Path]:
    """Tiny run + export in `work`; returns (export exit code, export folder)."""
    from marsseg.export.cli import main as export_main
    from marsseg.train.cli import main as train_main

    frames, masks = synthetic_frames(n=48)
    data = work / "frames.npz"
    np.savez_compressed(data, frames=frames, masks=masks)
    if train_main(["--data", str(data), "--epochs", str(epochs), "--batch-size", "8", "--out-dir", str(work),
                   "--run-name", "tiny", *TINY]) != 0:
        raise RuntimeError("tiny training failed")
    calib = work / "calib.npz"
    np.savez_compressed(calib, tiles=frames[:, :64] if calibration is None else calibration)
    out = work / "tiny" / "export"
    rc = export_main(["--model", str(work / "tiny" / "model.keras"), "--calibration", str(calib),
                      "--output", str(out)])
    return rc, out


def main() -> int:
    dest = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
    with tempfile.TemporaryDirectory() as tmp:
        rc, out = train_and_export(Path(tmp))
        if rc != 0:
            return rc
        shutil.copy(out / "model_int8.tflite", dest / "tiny_int8.tflite")
        meta = json.loads((out / "model_int8.json").read_text())
        meta["model_file"] = "tiny_int8.tflite"
        (dest / "tiny_int8.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {dest / 'tiny_int8.tflite'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
