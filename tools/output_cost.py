"""What one frame's file outputs cost: `marsseg-edge --output` at each PNG level, with and without the npz.

  python -m tools.output_cost [--size 1024] [--repeats 10]

Segments one real frame (the bundled clip, as a mosaic of `--size` pixels, at the model's ground scale) and times
`FilePublisher.publish` (class mask + overlay PNG at the input's size, written atomically) per setting; prints
ms/frame and bytes/frame. The costs are paid on the output's own thread (`--queue`), beside inference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
from marsseg.edge.cli import bundled
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.publishers import FilePublisher, Result
from marsseg.edge.render import palette
from marsseg.edge.sources import Frame
from marsseg.edge.terrain import CostTable

from tools import one_line_errors
from tools.bench import make_frames

SETTINGS = ({"png_level": 0}, {"png_level": 1}, {"png_level": 6}, {"png_level": 9},
            {"png_level": 1, "npz": True}, {"png_level": 1, "npz": True, "npz_compress": False})


@one_line_errors("output_cost")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    if a.size < 128 or a.repeats < 1:
        p.error(f"--size takes 128 (the model's frame width) or more and --repeats 1 or more, got {a.size} and "
                f"{a.repeats}")
    model = TileModel(bundled("model_int8.tflite"))
    with tempfile.TemporaryDirectory() as tmp:
        make_frames(Path(tmp) / "in", (a.size, a.size), 1)
        gray = cv2.imread(str(Path(tmp) / "in" / "f0000.png"), cv2.IMREAD_GRAYSCALE)
        work = cv2.resize(gray, (128, 128 * gray.shape[0] // gray.shape[1]), interpolation=cv2.INTER_AREA)
        seg = Segmenter(model)(work)
        grid = Result(gray, seg.mask, seg.confidence).grid_at(16, CostTable(tuple(model.meta.costs())))
        for k, setting in enumerate(SETTINGS):
            out = Path(tmp) / f"out{k}"
            pub = FilePublisher(out, palette(model.meta.colours), **setting)
            t0 = time.perf_counter()
            for i in range(a.repeats):
                pub.publish(Frame(f"f{i}", i, 0.0, gray), Result(gray, seg.mask, seg.confidence, grid, 0.0))
            ms = (time.perf_counter() - t0) / a.repeats * 1000
            size = sum(f.stat().st_size for f in out.glob("f0[._]*"))
            print(f"{a.size}x{a.size} {setting}: {ms:.1f} ms/frame, {size / 1e3:.0f} kB/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
