"""Mean IoU along one camera setting: what a camera pipeline may do before `marsseg-edge`, measured.

Sweeps one parameter of one degradation of `marsseg/core/degrade.py` over the given values, each applied to the
whole frame (seeded) and run on the edge path at frame level, e.g. the JPEG quality a downlink may use:

  python -m tools.camera_sweep ../shared/data/ai4mars-frames-128.npz --names edge/assets/val_names.json \\
      jpeg quality 95 90 80 70 60 50 40 30
  python -m tools.camera_sweep ... sharpen amount 0 0.5 1 2 --fixed sigma=1.0
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np
from marsseg.core import degrade
from marsseg.core.io import write_text_atomic
from marsseg.edge.evaluate import evaluate

from tools import add_frames_args, frames_and_model, one_line_errors


@one_line_errors("camera_sweep")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.camera_sweep", description=__doc__.split("\n\n")[0])
    add_frames_args(p)
    p.add_argument("kind", help="a degradation function of marsseg.core.degrade, e.g. jpeg, sharpen, gaussian_blur")
    p.add_argument("param", help="its parameter to sweep")
    p.add_argument("values", nargs="+", help="values (numbers, or names for resample kernels)")
    p.add_argument("--fixed", nargs="*", default=[], metavar="NAME=VALUE", help="its other parameters")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="JSON file for the sweep")
    a = p.parse_args(argv)
    fn = getattr(degrade, a.kind.replace("-", "_"), None)
    if not callable(fn):
        p.error(f"no degradation {a.kind!r} in marsseg.core.degrade")

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    if bad := [item for item in a.fixed if "=" not in item]:
        p.error(f"--fixed takes NAME=VALUE, got {bad[0]!r}")
    fixed = {k: value(v) for k, v in (item.split("=", 1) for item in a.fixed)}
    params = [n for n in inspect.signature(fn).parameters if n not in ("img", "rng")]
    if unknown := [n for n in (a.param, *fixed) if n not in params]:
        p.error(f"{a.kind} has no parameter {unknown[0]!r}; it takes {', '.join(params)}")
    for v in map(value, a.values):  # a value the degradation cannot take is refused before the evaluation
        try:
            fn(np.zeros((8, 8), np.uint8), np.random.default_rng(0), **{a.param: v, **fixed})
        except (TypeError, ValueError) as e:
            p.error(f"{a.kind} {a.param}={v!r}: {e}")
    model, ds = frames_and_model(a)
    frames, masks = ds.frames, ds.masks
    rows = [{"value": None, **evaluate(model, frames, masks, a.overlap, thresholds=None)}]
    for v in map(value, a.values):
        changed = np.stack([fn(f, np.random.default_rng((a.seed, i)), **{a.param: v, **fixed})
                            for i, f in enumerate(frames)])
        rows.append({"value": v, **evaluate(model, changed, masks, a.overlap, thresholds=None)})
    for r in rows:
        label = "unchanged" if r["value"] is None else f"{a.param}={r['value']:g}" if isinstance(r["value"], float) \
            else f"{a.param}={r['value']}"
        print(f"{a.kind} {label}: mean IoU {r['mean_iou']:.4f} | " +
              " ".join(f"{k} {x:.3f}" for k, x in r["per_class_iou"].items()))
    if a.output:
        write_text_atomic(a.output, json.dumps({"kind": a.kind, "param": a.param, "fixed": fixed,
                                                "run_id": model.meta.run_id, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
