"""marsseg-edge against a naive loop on the same model and frames, and both against the invoke-only limit.

  python -m tools.side_by_side [--output bench/results] [--quick]

Cases: 128x128 frames at overlap 0 and 0.25, and 1024x1024 frames at the model's ground scale (`--scale 0.125`),
read from PNG files and, as a camera delivers them, raw (one uncompressed frames .npz: no decoding); each without
outputs and with `--output --no-overlay` (the class mask PNG at the input's size). For each:
- `edge`: frames/s of `marsseg-edge SOURCE [OUT] --summary-json` (its own count, start-up excluded);
- `naive`: a plain loop with the same model: read the frame, resize like the runtime, one batch-1 invoke per tile
  at the runtime's tile positions, argmax pasted into a mask (no blending), write the mask PNG when outputs are on;
- `invoke_limit`: frames/s the interpreter alone reaches with that many tiles per frame in one batch.
Each is the best of `--repeats` runs (3). Ratios: edge / naive, and each as a fraction of the invoke-only limit.
Writes bench/results/<host>-<date>-side.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from marsseg.core.frames import load_frames
from marsseg.core.io import writable_folder
from marsseg.core.tiling import TileGrid
from marsseg.edge.cli import bundled
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.sources import to_gray, work_size

from tools import one_line_errors
from tools.bench import REPO, base_result, make_frames, say, write_result

CASES = (  # (frame size, overlap, scale, source kind)
    ((128, 128), 0.0, 1.0, "png"),
    ((128, 128), 0.25, 1.0, "png"),
    ((1024, 1024), 0.25, 0.125, "png"),
    ((1024, 1024), 0.25, 0.125, "raw"),
)


def grid_for(model: TileModel, shape: tuple[int, int], overlap: float) -> TileGrid:
    """The runtime's tile positions for a frame of `shape` (its Segmenter turns the overlap into pixels)."""
    return TileGrid(shape, model.tile_shape, Segmenter(model, overlap).overlap)


def read_frames(source: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, gray frame) from a PNG folder (decoded one by one) or a frames .npz (raw, in memory)."""
    if source.suffix == ".npz":
        ds = load_frames(source, labelled=False)
        yield from zip(ds.names, ds.frames, strict=True)
    else:
        for f in sorted(source.glob("*.png")):
            yield f.stem, cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)


def edge_fps(model: Path, frames: Path, out: Path | None, overlap: float, scale: float) -> float:
    summary = frames.parent / "summary.json"
    args = [sys.executable, "-m", "marsseg.edge.cli", str(frames), *([str(out), "--no-overlay"] if out else []),
            "--model", str(model), "--overlap", str(overlap), "--summary-json", str(summary), "--log-level", "WARNING"]
    if scale != 1.0:
        args += ["--scale", str(scale)]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(summary.read_text())["fps"]


def naive_fps(model: Path, frames: Path, out: Path | None, overlap: float, scale: float) -> float:
    m = TileModel(model)
    t0, n = time.perf_counter(), 0
    for name, frame in read_frames(frames):
        n += 1
        img = to_gray(frame, scale)
        grid = grid_for(m, img.shape, overlap)
        mask = np.zeros(img.shape, np.uint8)
        th, tw = m.tile_shape
        for y, x in grid.boxes:
            classes = m.predict(img[None, y : y + th, x : x + tw]).argmax(-1)[0]
            mask[y : y + th, x : x + tw] = classes
        if out:  # at the input's size, as the runtime's mask PNG
            size = (frame.shape[1], frame.shape[0])
            cv2.imwrite(str(out / f"{name}.png"), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
    return n / (time.perf_counter() - t0)


def invoke_limit(model: Path, tiles: int, seconds: float) -> float:
    m = TileModel(model)
    batch = np.random.default_rng(0).integers(0, 256, (tiles, *m.tile_shape), dtype=np.uint8)
    m.predict(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 5:
        m.predict(batch)
        n += 1
    return n / (time.perf_counter() - t0)


def pack_frames(pngs: Path) -> Path:
    """The PNG folder's frames as one uncompressed frames .npz beside it (a camera's frames need no decoding)."""
    path = pngs.parent / "frames.npz"
    if not path.exists():
        names, frames = zip(*read_frames(pngs), strict=True)
        np.savez(path, frames=np.stack(frames), names=np.array(names))
    return path


@one_line_errors("side_by_side")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--model", type=Path, default=bundled("model_int8.tflite"))
    p.add_argument("--quick", action="store_true", help="a few frames per case (smoke check)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    a = p.parse_args(argv)
    writable_folder(a.output, "--output")
    result = base_result()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, overlap, scale, kind in CASES:
            n = (4 if a.quick else 120) if shape[0] > 128 else (8 if a.quick else 240)
            pngs = Path(tmp) / f"{shape[0]}x{shape[1]}" / "frames"
            if not pngs.is_dir():
                make_frames(pngs, shape, n)
            frames = pngs if kind == "png" else pack_frames(pngs)
            w, h = work_size(shape, scale)
            tiles = len(grid_for(TileModel(a.model), (h, w), overlap))
            limit = max(invoke_limit(a.model, tiles, 0.5 if a.quick else 2.0) for _ in range(a.repeats))
            for outputs in (False, True):
                out = frames.parent / "out-edge" if outputs else None
                naive_out = frames.parent / "out-naive" if outputs else None
                for d in (out, naive_out):
                    if d:
                        d.mkdir(exist_ok=True)
                # best of `--repeats`: this VM's speed varies up to 2x between runs; the best is the least disturbed
                edge = max(edge_fps(a.model, frames, out, overlap, scale) for _ in range(a.repeats))
                naive = max(naive_fps(a.model, frames, naive_out, overlap, scale) for _ in range(a.repeats))
                r = {"frame_shape": list(shape), "source": kind, "overlap": overlap, "scale": scale,
                     "tiles_per_frame": tiles,
                     "outputs": outputs, "frames": n, "edge_fps": round(edge, 2), "naive_fps": round(naive, 2),
                     "invoke_limit_fps": round(limit, 2), "edge_over_naive": round(edge / naive, 3),
                     "edge_share_of_limit": round(edge / limit, 3), "naive_share_of_limit": round(naive / limit, 3)}
                say(f"  {shape[0]}x{shape[1]} {kind} overlap {overlap:g} scale {scale:g} ({tiles} tiles)"
                    f"{' + outputs' if outputs else ''}: edge {edge:.1f} fps, naive {naive:.1f}, invoke-only "
                    f"{limit:.1f} -> edge/naive {r['edge_over_naive']:.2f}, edge {r['edge_share_of_limit']:.0%} of "
                    "the limit")
                rows.append(r)
    result["side_by_side"] = rows
    return write_result(result, a.output, "-side")


if __name__ == "__main__":
    sys.exit(main())
