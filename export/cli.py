"""`marsseg-export`: trained .keras -> full-integer int8 .tflite + metadata + op report + accuracy gate.

Examples:
  marsseg-export                                  # latest run under ./runs
  marsseg-export --model runs/default/model.keras --budget 1.0
  marsseg-export calibrate --data ../shared/data/ai4mars-frames-128.npz --out calibration_data/calibration_tiles.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from marsseg.core.frames import DataError
from marsseg.core.interpreter import ModelError, make_interpreter
from marsseg.core.io import (
    OutputError,
    sha256_file,
    writable_folder,
    write_atomic,
    write_bytes_atomic,
    write_text_atomic,
)
from marsseg.core.metadata import build_metadata, metadata_path
from marsseg.core.spec import CLASS_NAMES, TILE_SHAPE, exposure_floor
from marsseg.train.run import RunError

log = logging.getLogger("marsseg.export")
DEFAULT_CALIBRATION = Path("calibration_data/calibration_tiles.npz")


class ExportError(RuntimeError):
    pass


def latest_model(runs: Path) -> Path:
    models = sorted(runs.glob("*/model.keras"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise ExportError(f"no trained model under {runs}/*/model.keras: run `make train` or pass --model")
    return models[-1]


def load_keras(path: Path):
    import keras

    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises a variety of types for a damaged archive
        raise ExportError(f"{path} is not a loadable .keras model ({type(e).__name__}: {e})") from e
    expected = (None, *TILE_SHAPE, 1)
    if tuple(model.input_shape) != expected:
        raise ExportError(f"{path}: model input shape {tuple(model.input_shape)}, expected {expected}")
    return model


def plot_iou(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CLASS_NAMES[1:]] + ["mean"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for k, r in enumerate(results):
        vals = [r["per_class_iou"][n] for n in CLASS_NAMES[1:]] + [r["mean_iou"]]
        ax.bar(np.arange(len(names)) + k * width, vals, width, label=r["name"])
    ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, names)
    ax.set_ylim(0, 1), ax.set_ylabel("IoU (background ignored)"), ax.legend()
    ax.set_title("float vs int8 on held-out validation tiles")
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def export(model_path: Path, out_dir: Path, calibration: Path, budget: float, data: str | None) -> dict:
    from marsseg.export import convert as C
    from marsseg.export.calibrate import load_calibration
    from marsseg.train.run import RunFolder
    from marsseg.train.scoring import predict_classes

    if not (budget >= 0 and np.isfinite(budget)):
        raise ExportError(f"--budget is the int8 mean-IoU loss allowed, in points, and must be >= 0; got {budget}")
    run = RunFolder(model_path.parent)
    run_dir = run.path
    model = load_keras(model_path)
    tiles = load_calibration(calibration)
    if tiles.shape[1:] != TILE_SHAPE:
        raise ExportError(f"{calibration}: calibration tiles are {tiles.shape[1:]}, expected {TILE_SHAPE}")
    writable_folder(out_dir, f"--output {out_dir}")  # before the minutes of conversion, not after
    val_x, val_y = run.validation_tiles(data)
    train_metrics = {}
    if run.finished:
        m = run.metrics()
        train_metrics = {k: m[k] for k in ("mean_iou", "per_class_iou", "pixel_accuracy", "best_epoch",
                                            "parameters", "macs_per_tile") if k in m}

    # the float model ships beside the int8 one (weights only, no optimizer state) for fine-tuning on a user's camera
    float_path = out_dir / "model.keras"
    write_atomic(float_path, lambda p: model.save(p))
    float_model = {"file": float_path.name, "sha256": sha256_file(float_path)}
    deg_per_pixel = run.config().data.deg_per_pixel
    floor = exposure_floor(tiles)  # the same for both kinds: a property of the calibration tiles

    timings, paths = {}, {}
    for kind, calib in (("float32", None), ("int8", tiles)):
        t0 = time.perf_counter()
        log.info("converting to %s TFLite%s", kind, "" if calib is None else f" with {len(tiles)} calibration tiles")
        content = C.convert(model, calib)
        timings[kind] = round(time.perf_counter() - t0, 1)
        final = out_dir / f"model_{kind}.tflite"
        path = final.with_name(f"model_{kind}.candidate.tflite") if kind == "int8" else final
        write_bytes_atomic(path, content)
        meta = build_metadata(path, make_interpreter(path), run_dir.name, train_metrics,
                              {"calibration": str(calibration), "calibration_tiles": len(tiles),
                               "converter": "tf.lite.TFLiteConverter.from_keras_model", "kind": kind},
                              deg_per_pixel, float_model, floor)
        meta.model_file = final.name
        write_text_atomic(metadata_path(path), meta.to_json())
        paths[kind] = (path, final, meta)

    ops = C.op_report(paths["int8"][0])
    log.info("int8 ops: %s", ", ".join(f"{k} x{v}" for k, v in ops["ops"].items()))

    log.info("evaluating float Keras on %d validation tiles", len(val_x))
    ref, _ = predict_classes(model, val_x)
    results = [C.summarise("keras_float32", val_y, ref, None)]
    for kind in ("float32", "int8"):
        pred = C.evaluate_tflite(paths[kind][0], paths[kind][2], val_x)
        results.append(C.summarise(f"tflite_{kind}", val_y, pred, ref))
    drop = (results[0]["mean_iou"] - results[2]["mean_iou"]) * 100
    passed = drop <= budget and not ops["problems"]
    report = {
        "model": str(model_path), "run_id": run_dir.name, "val_tiles": len(val_x), "budget_points": budget,
        "int8_drop_points": round(drop, 3), "passed": passed, "results": results, "op_report": ops,
        "conversion_seconds": timings,
        "sizes_bytes": {k: paths[k][0].stat().st_size for k in paths},
        "keras_bytes": model_path.stat().st_size,
    }
    write_text_atomic(out_dir / "export_report.json", json.dumps(report, indent=2))
    plot_iou(results, out_dir / "export_iou.png")
    if passed:
        cand, final, _ = paths["int8"]
        os.replace(metadata_path(cand), metadata_path(final))
        os.replace(cand, final)
    return report


def main_calibrate(argv: list[str]) -> int:
    from marsseg.export.calibrate import make_calibration

    p = argparse.ArgumentParser(prog="marsseg-export calibrate", description="Build the calibration tile set.")
    p.add_argument("--data", default=None, help="frames file (default: $MARSSEG_DATA)")
    p.add_argument("--out", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    try:
        writable_folder(a.out.parent, f"--out {a.out}: folder {a.out.parent}")  # before the data is read
        prov = make_calibration(a.data or "", a.out, a.n, a.seed)
    except (DataError, OutputError) as e:
        print(f"marsseg-export calibrate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(prov, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        return main_calibrate(argv[1:])
    p = argparse.ArgumentParser(prog="marsseg-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="trained .keras (default: the latest under --runs)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--output", type=Path, help="output folder (default: <run>/export)")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--budget", type=float, default=1.0, help="max int8 mean-IoU loss vs float, in points")
    p.add_argument("--data", default=None, help="frames file for the validation tiles (default: the run's)")
    a = p.parse_args(argv)
    try:
        model_path = a.model or latest_model(a.runs)
        report = export(model_path, a.output or model_path.parent / "export", a.calibration, a.budget, a.data)
    except (ExportError, DataError, ModelError, RunError, OutputError) as e:
        print(f"marsseg-export: error: {e}", file=sys.stderr)
        return 2
    r = {x["name"]: x for x in report["results"]}
    print(f"float Keras mIoU {r['keras_float32']['mean_iou']:.4f} | float TFLite {r['tflite_float32']['mean_iou']:.4f}"
          f" | int8 {r['tflite_int8']['mean_iou']:.4f} (drop {report['int8_drop_points']:.2f} points,"
          f" budget {report['budget_points']}) | agreement {r['tflite_int8']['argmax_agreement']:.4f}")
    if report["op_report"]["problems"]:
        print(f"marsseg-export: error: op report: {'; '.join(report['op_report']['problems'])}", file=sys.stderr)
        return 1
    if not report["passed"]:
        print(f"marsseg-export: error: int8 model loses {report['int8_drop_points']:.2f} mean-IoU points, over the "
              f"{report['budget_points']} budget; the candidate is kept as model_int8.candidate.tflite for inspection "
              "(check the calibration set, or raise --budget knowingly)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
