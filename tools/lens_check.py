"""What a wide lens's distortion costs the model, and what `marsseg-edge --camera-info` gives back.

  python -m tools.lens_check ../shared/data/ai4mars-frames-128.npz --names edge/assets/val_names.json \\
      [--k1 -0.3 --k2 0.1] [--size 512] [--output docs/robustness/lens-<run>.json]

The frames are brought to `--size`² (bicubic: the navcam's 45° pinhole view) and delivered through a lens with
radial distortion k1, k2 (plumb_bob), its focal length the smallest that keeps the delivered frame inside that view;
their masks alike (nearest). `marsseg-edge` runs them on its own path (int8, tiling, blending), with the masks as
truth: the pinhole frames with `--fov 45`; the delivered ones with the lens's calibration (`--camera-info`, which
undistorts frame and truth alike); and uncalibrated, with `--fov` their true horizontal field of view.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from marsseg.core.frames import load_frames
from marsseg.core.io import write_text_atomic

from tools import add_frames_args, one_line_errors


def lens_maps(size: int, k1: float, k2: float) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """The lens's camera matrix, distortion and true horizontal field of view (degrees), and where each of its
    pixels lies in the pinhole view (a remap table)."""
    c = (size - 1) / 2
    f_src = size / 2 / math.tan(math.radians(22.5))
    d = np.array([k1, k2, 0, 0, 0], np.float64)
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    zoom = 1.0
    while True:  # the delivered frame must stay inside the pinhole source
        k = np.array([[f_src * zoom, 0, c], [0, f_src * zoom, c], [0, 0, 1]])
        xy = cv2.undistortPoints(pts, k, d).reshape(size, size, 2)
        if np.abs(xy).max() * f_src <= c:
            break
        zoom *= 1.01
    mid = xy[size // 2]
    hfov = math.degrees(math.atan(-mid[0, 0]) + math.atan(mid[-1, 0]))
    return k, d, hfov, (xy * f_src + c).astype(np.float32)


@one_line_errors("lens_check")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.lens_check", description=__doc__.split("\n\n")[0])
    add_frames_args(p)
    p.add_argument("--size", type=int, default=512, help="pinhole frame size the frames are brought to")
    p.add_argument("--k1", type=float, default=-0.3, help="radial distortion (negative: barrel)")
    p.add_argument("--k2", type=float, default=0.1)
    p.add_argument("--output", type=Path, help="JSON file for the figures")
    a = p.parse_args(argv)
    if a.size < 128:
        p.error(f"--size takes 128 or more, got {a.size}")
    from marsseg.edge.cli import main as edge

    ds = load_frames(a.data, names_file=a.names)
    k, d, hfov, xy = lens_maps(a.size, a.k1, a.k2)
    big = [(cv2.resize(f, (a.size,) * 2, interpolation=cv2.INTER_CUBIC),
            cv2.resize(m, (a.size,) * 2, interpolation=cv2.INTER_NEAREST)) for f, m in zip(ds.frames, ds.masks,
                                                                                        strict=True)]
    out = {"frames": len(big), "size": a.size, "camera_matrix": k.tolist(), "distortion": d.tolist(),
           "true_hfov_deg": round(hfov, 3), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fs = cv2.FileStorage(str(tmp / "lens.yaml"), cv2.FILE_STORAGE_WRITE)
        for key, value in (("image_width", a.size), ("image_height", a.size), ("camera_matrix", k),
                           ("distortion_coefficients", d)):
            fs.write(key, value)
        fs.release()
        delivered = [(cv2.remap(f, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
                      cv2.remap(m, xy, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)) for f, m in big]
        for name, pairs in (("pinhole", big), ("lens", delivered)):
            np.savez(tmp / f"{name}.npz", frames=np.stack([f for f, _ in pairs]), masks=np.stack([m for _, m in pairs]))
        del big, delivered
        model = ["--model", a.model] if a.model else []
        for name, source, flags in (("pinhole, --fov 45", "pinhole", ["--fov", "45"]),
                                    ("lens, --camera-info", "lens", ["--camera-info", str(tmp / "lens.yaml")]),
                                    (f"lens, --fov {hfov:.1f} (uncalibrated)", "lens", ["--fov", f"{hfov:.3f}"])):
            summary = tmp / f"{source}-{len(out['results'])}.json"
            rc = edge(["--source", str(tmp / f"{source}.npz"), "--summary-json", str(summary), "--log-level",
                       "WARNING", *model, *flags])
            if rc != 0:
                return rc
            s = json.loads(summary.read_text())
            out["results"][name] = {"mean_iou": s["mean_iou"], "per_class_iou": s["per_class_iou"]}
            print(f"{name}: mean IoU {s['mean_iou']:.4f} | " +
                  " ".join(f"{c} {v:.3f}" for c, v in s["per_class_iou"].items()), flush=True)
    if a.output:
        write_text_atomic(a.output, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
