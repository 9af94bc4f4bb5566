"""`marsseg-eval`: frame-level accuracy of the edge pipeline (tiling, int8 interpreter, blending).

Runs the exact runtime path over a frames file (`frames`, `masks`, optional `names`) and reports mean IoU
(background-truth pixels ignored, classes 1..4), per-class IoU and the confusion matrix, for each overlap
asked. Overlap 0 on 128x128 frames is plain tile-level inference (two 64x128 tiles per frame, no
blending); larger overlaps blend overlapping tiles. `--exposure` repeats the first overlap on the same frames
darkened, brightened and flattened, to show how much a change of camera exposure costs.

Examples:
  marsseg-eval ../shared/data/ai4mars-frames-128.npz --names runs/default/split.json --output out/eval
  marsseg-eval clip.npz --model model_int8.tflite --overlap 0 0.25 0.5
  marsseg-eval clip.npz --overlap 0 --exposure
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from marsseg.edge.interpreter import ModelError
from marsseg.edge.io import write_bytes_atomic, write_text_atomic
from marsseg.edge.metrics import confusion_matrix, scores
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.publishers import encode_png
from marsseg.edge.spec import exposure_lut
from marsseg.edge.terrain import CostTable, terrain_grid

log = logging.getLogger("marsseg.eval")


def load_frames(path: Path, names_file: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            frames, masks = z["frames"], z["masks"]
            names = z["names"].astype(str) if "names" in z.files else np.arange(len(frames)).astype(str)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: expected an .npz with 'frames' and 'masks' ({e})") from e
    if frames.shape != masks.shape or frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames {frames.dtype} {frames.shape} and masks {masks.shape} must be uint8 "
                         "(N, H, W) of equal shape")
    if names_file is not None:
        d = json.loads(names_file.read_text())
        wanted = set(d["val_names"] if isinstance(d, dict) else d)
        keep = np.array([n in wanted for n in names])
        if not keep.any():
            raise ValueError(f"none of the names in {names_file} are in {path}")
        frames, masks, names = frames[keep], masks[keep], names[keep]
    return frames, masks, names


def confusion_png(cm: np.ndarray, names: tuple[str, ...], title: str) -> bytes:
    """Row-normalised confusion matrix drawn with OpenCV (the edge install has no matplotlib)."""
    n, cell, left, top = len(names), 70, 110, 60
    img = np.full((top + n * cell + 40, left + n * cell + 10, 3), 255, np.uint8)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (10, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(n):
        cv2.putText(img, names[i][:10], (5, top + i * cell + cell // 2 + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, names[i][:8], (left + i * cell + 4, top + n * cell + 20), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for j in range(n):
            v = float(norm[i, j])
            shade = int(255 - 200 * v)
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 2, y0 + cell - 2), (255, shade, shade), -1)
            cv2.putText(img, f"{v:.2f}", (x0 + 14, y0 + cell // 2 + 5), font, 0.45,
                        (255, 255, 255) if v > 0.6 else (0, 0, 0), 1, cv2.LINE_AA)
    return encode_png(img)


# (gamma, gain, offset) of `spec.exposure_lut`: an under-exposed, an over-exposed and a hazy, low-contrast camera
EXPOSURES: dict[str, tuple[float, float, float]] = {
    "dark": (1.25, 0.8, 0.0), "bright": (0.8, 1.25, 0.0), "low-contrast": (1.0, 0.7, 0.1)}

CELL_KINDS = ("unlabelled", "right", "wrong")  # the codes 0, 1, 2 of `kind` below


def evaluate(model: TileModel, frames: np.ndarray, masks: np.ndarray, overlap: float, cell: int = 16,
             thresholds: tuple[float, ...] = ()) -> dict:
    """Pixel confusion matrix and scores; per threshold, which terrain-grid cells `--min-confidence` would flag.

    Cells are sorted by their true majority class: unlabelled (background), right (predicted majority = true),
    wrong. A useful threshold flags many wrong and unlabelled cells and few right ones.
    """
    seg = Segmenter(model, overlap)
    n = model.meta.num_classes
    cm = np.zeros((n, n), np.int64)
    flagged = np.zeros((len(thresholds), len(CELL_KINDS)), np.int64)
    cells = np.zeros(len(CELL_KINDS), np.int64)
    table = CostTable((0.0,) * n)
    t0 = time.perf_counter()
    for i in range(len(frames)):
        out = seg(frames[i])
        cm += confusion_matrix(masks[i], out.mask, n)
        pred = terrain_grid(out.mask, out.confidence, (cell, cell), table)
        truth = terrain_grid(masks[i], out.confidence, (cell, cell), table).classes
        kind = np.where(truth == 0, 0, np.where(pred.classes == truth, 1, 2)).ravel()
        cells += np.bincount(kind, minlength=len(CELL_KINDS))
        for k, t in enumerate(thresholds):
            flagged[k] += np.bincount(kind[pred.confidence.ravel() < t], minlength=len(CELL_KINDS))
        if i % 200 == 0:
            log.info("overlap %.2f: %d/%d frames", overlap, i, len(frames))
    s = scores(cm, model.meta.class_names)
    share = np.round(flagged / np.maximum(cells, 1), 4)
    return {"overlap": overlap, **s.as_dict(), "confusion_matrix": cm.tolist(),
            "seconds": round(time.perf_counter() - t0, 2), "frames": len(frames),
            "min_confidence": {"cell": cell, "cells": _by_kind(cells),
                               "flagged_share": {f"{t:g}": _by_kind(share[k]) for k, t in enumerate(thresholds)}}}


def _by_kind(values: np.ndarray) -> dict:
    return dict(zip(CELL_KINDS, values.tolist(), strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="marsseg-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help=".npz with frames and masks")
    p.add_argument("--model", help="int8 .tflite (default: the bundled model)")
    p.add_argument("--names", type=Path, help="JSON list of frame names, or a run's split.json (its val_names)")
    p.add_argument("--overlap", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--output", type=Path, help="folder for eval.json and confusion PNGs")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cell", type=int, default=16, help="terrain grid cell (pixels) for the --min-confidence study")
    p.add_argument("--min-confidence", type=float, nargs="*", default=[0.6, 0.7, 0.8],
                   help="thresholds to report: share of unlabelled / right / wrong cells each would flag")
    p.add_argument("--exposure", nargs="*", choices=sorted(EXPOSURES), metavar="CHANGE",
                   help=f"also evaluate under these exposure changes (none named: all of {', '.join(EXPOSURES)})")
    a = p.parse_args(argv)
    exposures = (a.exposure or list(EXPOSURES)) if a.exposure is not None else []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from marsseg.edge.cli import bundled

    try:
        model = TileModel(a.model or bundled("model_int8.tflite"), num_threads=a.threads or None)
        frames, masks, _ = load_frames(a.data, a.names)
        results = [evaluate(model, frames, masks, o, a.cell, tuple(a.min_confidence)) for o in a.overlap]
        changed = [{"exposure": name, **dict(zip(("gamma", "gain", "offset"), EXPOSURES[name], strict=True)),
                    **evaluate(model, exposure_lut(*EXPOSURES[name])[frames], masks, a.overlap[0], a.cell)}
                   for name in exposures]
    except (ModelError, ValueError, OSError) as e:
        print(f"marsseg-eval: error: {e}", file=sys.stderr)
        return 2
    report = {"model": str(model.path), "model_sha256": model.meta.model_sha256, "data": str(a.data),
              "frames": len(frames), "results": results, "exposure": changed}
    for r in results + changed:
        change = f" ({r['exposure']} exposure)" if "exposure" in r else ""
        print(f"overlap {r['overlap']:.2f}{change}: mean IoU {r['mean_iou']:.4f} | " +
              " ".join(f"{k} {v:.3f}" for k, v in r["per_class_iou"].items()) +
              f" | {r['seconds'] / max(len(frames), 1) * 1000:.1f} ms/frame")
        for t, f in r["min_confidence"]["flagged_share"].items():
            print(f"  --min-confidence {t}: flags {f['wrong']:.1%} of wrong cells, {f['unlabelled']:.1%} of "
                  f"unlabelled, {f['right']:.1%} of right ({a.cell}-px cells)")
    if a.output:
        write_text_atomic(a.output / "eval.json", json.dumps(report, indent=2))
        for r in results:
            write_bytes_atomic(a.output / f"confusion_overlap{r['overlap']:.2f}.png",
                               confusion_png(np.array(r["confusion_matrix"]), model.meta.class_names,
                                             f"overlap {r['overlap']:.2f}: mIoU {r['mean_iou']:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
