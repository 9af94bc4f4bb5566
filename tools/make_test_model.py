"""Regenerate the tiny int8 model fixture used by the edge tests (tests/fixtures/tiny_int8.*).

  python -m tools.make_test_model [--output tests/fixtures]

Trains a tiny dual U-Net (widths 4/8/8) for 4 epochs on the suite's synthetic brightness-band frames
(tests/conftest.py: synthetic_frames) through the real training CLI, then exports it through the real
export CLI with those frames as calibration tiles. The result is a genuine full-integer model (~40 kB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from marsseg.core.io import write_bytes_atomic, write_text_atomic

from tests.conftest import synthetic_frames

TINY = ["--set", "model.fine_widths=[4,8,8]", "--set", "model.bottleneck=8", "--set", "model.coarse_widths=[8,8]",
        "--set", "model.coarse_bottleneck=8", "--set", "model.se_ratio=1"]


def single_phase(epochs: int) -> list[str]:
    """Flags for one plain phase of `epochs` epochs instead of the default recipe's phases."""
    return ["--set", "phases=[]", "--set", f"optim.epochs={epochs}"]


def train_tiny(work: Path, epochs: int = 4) -> Path:
    """A tiny run in `work/tiny` on synthetic frames (written to `work/frames.npz`); returns its model."""
    from marsseg.train.cli import main as train_main

    frames, masks = synthetic_frames(n=48)
    data = work / "frames.npz"
    np.savez_compressed(data, frames=frames, masks=masks)
    plain = work / "plain.json"  # the config's defaults, not the recipe (its weight average alone would keep a
    plain.write_text("{}")  # few dozen steps near the random start)
    if train_main(["--config", str(plain), "--data", str(data), "--set", f"optim.epochs={epochs}", "--batch-size", "8",
                   "--out-dir", str(work), "--run-name", "tiny", *TINY]) != 0:
        raise RuntimeError("tiny training failed")
    return work / "tiny" / "model.keras"


def export_tiny(model: Path, out: Path, calibration: np.ndarray | None = None) -> int:
    """Export through the real CLI; calibration defaults to the synthetic frames' top tiles."""
    from marsseg.export.cli import main as export_main

    if calibration is None:
        calibration = synthetic_frames(n=48)[0][:, :64]
    calib = out.parent / f"{out.name}-calibration.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(calib, tiles=calibration)
    return export_main(["--model", str(model), "--calibration", str(calib), "--output", str(out)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.make_test_model", description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures",
                    help="folder for tiny_int8.tflite and tiny_int8.json (default: the suite's fixtures)")
    dest = ap.parse_args(argv).output
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        rc = export_tiny(train_tiny(Path(tmp)), out)
        if rc != 0:
            return rc
        meta = json.loads((out / "model_int8.json").read_text())
        meta["model_file"] = "tiny_int8.tflite"
        # each file replaced whole: a run stopped half-way leaves the suite's fixture as it was
        write_bytes_atomic(dest / "tiny_int8.tflite", (out / "model_int8.tflite").read_bytes())
        write_text_atomic(dest / "tiny_int8.json", json.dumps(meta, indent=2))
    print(f"wrote {dest / 'tiny_int8.tflite'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
