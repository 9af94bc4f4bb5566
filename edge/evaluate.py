"""`marsseg-eval`: frame-level accuracy of the edge pipeline (tiling, int8 interpreter, blending).

Runs the exact runtime path over a frames file (`frames`, `masks`, optional `names`) and reports mean IoU
(background-truth pixels ignored, classes 1..4), per-class IoU and the confusion matrix, for each overlap
asked. Overlap 0 on 128x128 frames is plain tile-level inference (two 64x128 tiles per frame, no
blending); larger overlaps blend overlapping tiles.

`--corruptions` repeats the first overlap on the same frames as a real camera would deliver them: each degradation
of `degrade.SUITE` (blur, motion blur, sensor noise, JPEG, resampling kernels, exposure, vignetting, hot/dead pixels)
at three severities, applied to the whole frame before tiling, seeded. It reports each corruption × severity, their
mean ("corrupted mIoU") and its drop from the clean frames, in eval.json and as a chart (corruptions.png).
`--corruptions held-out` runs `degrade.HELD_OUT` instead: families neither the suite nor training uses.

Examples:
  marsseg-eval ../shared/data/ai4mars-frames-128.npz --names runs/default/split.json --output out/eval
  marsseg-eval clip.npz --model model_int8.tflite --overlap 0 0.25 0.5
  marsseg-eval clip.npz --overlap 0.25 --corruptions --output out/robustness
  marsseg-eval clip.npz --corruptions dark bright low-contrast
  marsseg-eval clip.npz --corruptions held-out
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
from marsseg.core.degrade import BY_NAME, GROUPS, corrupt_frames
from marsseg.core.frames import load_frames
from marsseg.core.interpreter import ModelError
from marsseg.core.io import writable_folder, write_bytes_atomic, write_text_atomic
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.publishers import encode_png
from marsseg.edge.terrain import CostTable, terrain_grid

log = logging.getLogger("marsseg.eval")


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


CELL_KINDS = ("unlabelled", "right", "wrong")  # the codes 0, 1, 2 of `kind` below


def evaluate(model: TileModel, frames: np.ndarray, masks: np.ndarray, overlap: float, cell: int = 16,
             thresholds: tuple[float, ...] | None = (), flip: bool = False,
             exposure_floor: float | None = None) -> dict:
    """Pixel confusion matrix and scores; per threshold, which terrain-grid cells `--min-confidence` would flag.

    Cells are sorted by their true majority class: unlabelled (background), right (predicted majority = true),
    wrong. A useful threshold flags many wrong and unlabelled cells and few right ones. `thresholds=None` skips
    the cell study (the corruption suite runs 37 passes and reports pixels only).
    """
    seg = Segmenter(model, overlap, flip, exposure_floor)
    n = model.meta.num_classes
    cm = np.zeros((n, n), np.int64)
    flagged = np.zeros((len(thresholds or ()), len(CELL_KINDS)), np.int64)
    cells = np.zeros(len(CELL_KINDS), np.int64)
    table = CostTable((0.0,) * n)
    t0 = time.perf_counter()
    for i in range(len(frames)):
        out = seg(frames[i])
        cm += confusion_matrix(masks[i], out.mask, n)
        if thresholds is None:
            continue
        pred = terrain_grid(out.mask, out.confidence, (cell, cell), table)
        truth = terrain_grid(masks[i], out.confidence, (cell, cell), table).classes
        kind = np.where(truth == 0, 0, np.where(pred.classes == truth, 1, 2)).ravel()
        cells += np.bincount(kind, minlength=len(CELL_KINDS))
        for k, t in enumerate(thresholds):
            flagged[k] += np.bincount(kind[pred.confidence.ravel() < t], minlength=len(CELL_KINDS))
    s = scores(cm, model.meta.class_names)
    log.info("overlap %.2f: %d frames, mean IoU %.4f", overlap, len(frames), s.mean_iou)
    result = {"overlap": overlap, "flip_average": flip, "exposure_floor": seg.exposure_floor, **s.as_dict(),
              "confusion_matrix": cm.tolist(), "seconds": round(time.perf_counter() - t0, 2), "frames": len(frames)}
    if thresholds is not None:
        share = np.round(flagged / np.maximum(cells, 1), 4)
        result["min_confidence"] = {"cell": cell, "cells": _by_kind(cells),
                                    "flagged_share": {f"{t:g}": _by_kind(share[k]) for k, t in enumerate(thresholds)}}
    return result


def _by_kind(values: np.ndarray) -> dict:
    return dict(zip(CELL_KINDS, values.tolist(), strict=True))


def corruption_study(model: TileModel, frames: np.ndarray, masks: np.ndarray, clean: dict, names: list[str],
                     seed: int = 0) -> dict:
    """Every corruption × severity of `names` (from `degrade.BY_NAME`) at the settings (overlap, flip averaging,
    exposure floor) of `clean` (the `evaluate` result of the same frames unchanged), on the edge's own path.

    "corrupted_mean_iou" is the mean over every pass; "worst_severity_2" the lowest typical-severity pass, the
    figure a single bad camera setting would cost.
    """
    t0 = time.perf_counter()
    overlap, rows = clean["overlap"], []
    for c in (BY_NAME[n] for n in names):
        for severity in (1, 2, 3):
            r = evaluate(model, corrupt_frames(frames, c, severity, seed), masks, overlap, thresholds=None,
                         flip=clean["flip_average"], exposure_floor=clean["exposure_floor"])
            rows.append({"corruption": c.name, "severity": severity, "params": c.severities[severity - 1],
                         "mean_iou": r["mean_iou"], "per_class_iou": r["per_class_iou"],
                         "drop": clean["mean_iou"] - r["mean_iou"]})
            log.info("%s severity %d: mean IoU %.4f (clean %.4f)", c.name, severity, r["mean_iou"], clean["mean_iou"])
    corrupted = float(np.mean([r["mean_iou"] for r in rows]))
    worst = min((r for r in rows if r["severity"] == 2), key=lambda r: r["mean_iou"])
    return {"overlap": overlap, "flip_average": clean["flip_average"], "exposure_floor": clean["exposure_floor"],
            "seed": seed, "frames": len(frames),
            "clean": {"mean_iou": clean["mean_iou"], "per_class_iou": clean["per_class_iou"]},
            "results": rows, "corrupted_mean_iou": corrupted, "drop": clean["mean_iou"] - corrupted,
            "worst_severity_2": {"corruption": worst["corruption"], "mean_iou": worst["mean_iou"],
                                 "drop": worst["drop"]},
            "seconds": round(time.perf_counter() - t0, 1)}


SEVERITY_COLOURS = ((235, 190, 120), (200, 120, 40), (140, 60, 10))  # BGR: light to dark blue


def corruptions_png(study: dict, title: str) -> bytes:
    """Mean IoU per corruption and severity as grouped bars, with the clean score and its -0.04 / -0.10 lines."""
    rows = study["results"]
    names = list(dict.fromkeys(r["corruption"] for r in rows))
    left, top, bar, gap, width = 150, 60, 9, 10, 560
    img = np.full((top + len(names) * (3 * bar + gap) + 50, left + width + 30, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    x_of = lambda v: left + round(v * width)  # noqa: E731 - mean IoU 0..1 across the plot
    cv2.putText(img, title, (10, 22), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for s, colour in enumerate(SEVERITY_COLOURS, 1):
        cv2.rectangle(img, (10 + 120 * s, 34), (22 + 120 * s, 44), colour, -1)
        cv2.putText(img, f"severity {s}", (26 + 120 * s, 44), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    bottom = img.shape[0] - 40
    for i, name in enumerate(names):
        y0 = top + i * (3 * bar + gap)
        cv2.putText(img, name, (5, y0 + 2 * bar), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for r in (r for r in rows if r["corruption"] == name):
            y = y0 + (r["severity"] - 1) * bar
            cv2.rectangle(img, (left, y), (x_of(r["mean_iou"]), y + bar - 2), SEVERITY_COLOURS[r["severity"] - 1], -1)
    clean = study["clean"]["mean_iou"]
    for v, colour, label in ((clean, (0, 140, 0), f"clean {clean:.3f}"), (clean - 0.04, (0, 140, 220), "-0.04"),
                             (clean - 0.10, (0, 0, 200), "-0.10")):
        cv2.line(img, (x_of(v), top - 6), (x_of(v), bottom), colour, 1, cv2.LINE_AA)
        cv2.putText(img, label, (x_of(v) - 20, bottom + 30 if label[0] == "-" else top - 8), font, 0.38, colour, 1,
                    cv2.LINE_AA)
    for t in np.arange(0, 1.01, 0.2):
        cv2.line(img, (x_of(t), bottom), (x_of(t), bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, f"{t:.1f}", (x_of(t) - 9, bottom + 16), font, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    return encode_png(img)


def print_study(study: dict) -> None:
    print(f"corruptions (overlap {study['overlap']:.2f}, seed {study['seed']}): clean {study['clean']['mean_iou']:.4f}"
          f" | corrupted mean IoU {study['corrupted_mean_iou']:.4f} (drop {study['drop']:.4f}) | worst at severity"
          f" 2: {study['worst_severity_2']['corruption']} {study['worst_severity_2']['mean_iou']:.4f}")
    by_name: dict[str, list[float]] = {}
    for r in study["results"]:
        by_name.setdefault(r["corruption"], []).append(r["mean_iou"])
    for name, values in by_name.items():
        print(f"  {name:<16} " + "  ".join(f"{v:.4f}" for v in values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="marsseg-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help=".npz with frames and masks")
    p.add_argument("--model", help="int8 .tflite (default: the bundled model)")
    p.add_argument("--names", type=Path, help="JSON list of frame names, or a run's split.json (its val_names)")
    p.add_argument("--overlap", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--output", type=Path, help="folder for eval.json and confusion PNGs")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--flip-average", action="store_true", help="as marsseg-edge --flip-average: average each tile's "
                                                               "answer with its mirror image's")
    p.add_argument("--exposure-floor", type=float, metavar="DN", help="as marsseg-edge --exposure-floor: lift "
                   "darker frames to this mean (default: the model's metadata; 0 = off)")
    p.add_argument("--cell", type=int, default=16, help="terrain grid cell (pixels) for the --min-confidence study")
    p.add_argument("--min-confidence", type=float, nargs="*", default=[0.6, 0.7, 0.8],
                   help="thresholds to report: share of unlabelled / right / wrong cells each would flag")
    p.add_argument("--corruptions", nargs="*", choices=[*BY_NAME, *GROUPS], metavar="NAME",
                   help=f"also evaluate the first overlap under these camera degradations at severities 1-3: "
                        f"any of {', '.join(BY_NAME)}, or a group ({', '.join(GROUPS)}); none named: the suite")
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (noise, pixels, directions)")
    a = p.parse_args(argv)
    named = (a.corruptions or ["suite"]) if a.corruptions is not None else []
    corruptions = list(dict.fromkeys(n for name in named for n in GROUPS.get(name, (name,))))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from marsseg.edge.cli import bundled

    try:
        if a.threads < 0 or not all(0 <= t <= 1 for t in a.min_confidence):
            raise ValueError(f"--threads must be >= 0 (0: all cores) and --min-confidence thresholds in [0, 1], got "
                             f"{a.threads} and {a.min_confidence}")
        if a.output:  # before the minutes of work, not after
            writable_folder(a.output, f"--output {a.output}")
        model = TileModel(a.model or bundled("model_int8.tflite"), num_threads=a.threads or None)
        ds = load_frames(a.data, names_file=a.names)
        frames, masks = ds.frames, ds.masks
        results = [evaluate(model, frames, masks, o, a.cell, tuple(a.min_confidence), a.flip_average, a.exposure_floor)
                   for o in a.overlap]
        study = corruption_study(model, frames, masks, results[0], corruptions, a.seed) if corruptions else None
    except (ModelError, ValueError, OSError) as e:
        print(f"marsseg-eval: error: {e}", file=sys.stderr)
        return 2
    report = {"model": str(model.path), "model_sha256": model.meta.model_sha256, "run_id": model.meta.run_id,
              "data": str(a.data), "frames": len(frames), "results": results}
    if study:
        report["corruptions"] = study
    for r in results:
        print(f"overlap {r['overlap']:.2f}: mean IoU {r['mean_iou']:.4f} | " +
              " ".join(f"{k} {v:.3f}" for k, v in r["per_class_iou"].items()) +
              f" | {r['seconds'] / max(len(frames), 1) * 1000:.1f} ms/frame" +
              (f" | frames darker than {r['exposure_floor']:.1f} DN brightened" if r["exposure_floor"] else ""))
        for t, f in r["min_confidence"]["flagged_share"].items():
            print(f"  --min-confidence {t}: flags {f['wrong']:.1%} of wrong cells, {f['unlabelled']:.1%} of "
                  f"unlabelled, {f['right']:.1%} of right ({a.cell}-px cells)")
    if study:
        print_study(study)
    if a.output:
        try:
            write_text_atomic(a.output / "eval.json", json.dumps(report, indent=2))
            for r in results:
                write_bytes_atomic(a.output / f"confusion_overlap{r['overlap']:.2f}.png",
                                   confusion_png(np.array(r["confusion_matrix"]), model.meta.class_names,
                                                 f"overlap {r['overlap']:.2f}: mIoU {r['mean_iou']:.3f}"))
            if study:
                write_bytes_atomic(a.output / "corruptions.png", corruptions_png(
                    study, f"{model.path.name} ({model.meta.run_id}): mean IoU under camera degradations, "
                           f"overlap {study['overlap']:.2f}{', flip-averaged' if study['flip_average'] else ''}, "
                           f"{len(frames)} frames"))
        except OSError as e:  # the figures above are printed; say what was not saved
            print(f"marsseg-eval: error: could not write {a.output}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
