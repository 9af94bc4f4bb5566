"""Markdown results table from run folders, so the README and notes quote artefacts, not retyped figures.

  python -m tools.results_table runs/default-v3 runs/seed1-dual-unet

Per run it reads `metrics.json` (float Keras, validation tiles), `export/export_report.json` (int8 tiles, when
the run was exported) and `eval/eval.json` (`marsseg-eval --output runs/<run>/eval`: frame level), and
prints one row: mean IoU over classes 1-4, per-class IoU of the float model, size, compute and training time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from marsseg.train.run import RunError, RunFolder


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def row(run: Path) -> str:
    """One table row for a run folder; missing stages show as a dash."""
    folder = RunFolder(run)
    m = folder.metrics()
    export = _load(folder.export_dir / "export_report.json")
    int8 = next((r["mean_iou"] for r in export["results"] if r["name"] == "tflite_int8"), None) if export else None
    ev = _load(folder.eval_dir / "eval.json")
    frame = {r["overlap"]: r["mean_iou"] for r in ev["results"]} if ev else {}
    per_class = " / ".join(f"{v:.3f}" for v in m["per_class_iou"].values())
    adjusted = " + logit adj." if m.get("logit_adjustment") else ""
    # the folder name: an adjusted copy (marsseg-adjust --output) keeps its training run's name in metrics.json
    return (f"| {run.name} | {m['arch']}, {m['loss']}{adjusted} | {_fmt(m['mean_iou'])} | {_fmt(int8)} | "
            f"{_fmt(frame.get(0.0))} | {_fmt(frame.get(0.25))} | {per_class} | {m['parameters'] / 1e6:.2f} M | "
            f"{m['macs_per_tile'] / 1e9:.3f} | {m['epochs_run']} ep (best {m['best_epoch']}), "
            f"{m['wall_seconds'] / 60:.0f} min |")


HEADER = ("| run | model, loss | float tile | int8 tile | int8 frame ov 0 | int8 frame ov 0.25 | "
          "soil / bedrock / sand / big rock (float) | params | GMAC/tile | training |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>)")
    args = p.parse_args(argv)
    try:
        rows = [row(r) for r in args.runs]
    except (RunError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join([HEADER, *rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
