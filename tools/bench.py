"""`make bench`: speed and memory of the edge runtime and the model on this machine -> JSON + table.

  python -m tools.bench [--export-dir runs/<run>/export] [--output bench/results] [--quick]

Measures (each printed as it runs):
- interpreter only: int8 and float32 TFLite, batch 1 and a frame's batch, 1 and 2 threads (tiles/s, ms p50/p95);
- end to end: the real `marsseg-edge` CLI on 128x128, 640x480 and 1024x1024 frames (fps, latency, stages,
  share of processing time outside invoke), its peak RSS and start-up time, and whether TensorFlow got imported;
- MACs per tile, achieved GMAC/s, and a float32 matmul peak of this CPU for scale;
- (training speed: `tools/train_bench.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
from marsseg.core.io import writable_folder, write_text_atomic
from marsseg.edge.cli import bundled
from marsseg.edge.model import TileModel

from tools import one_line_errors

REPO = Path(__file__).resolve().parents[1]
# x86 and Arm flags that matter for int8/float32 inference kernels
SIMD_FLAGS = {"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm"}


def say(msg: str) -> None:
    print(msg, flush=True)


def percentiles(samples: list[float]) -> dict:
    a = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


def interpreter_bench(model_path: Path, batch: int, threads: int, seconds: float) -> dict:
    m = TileModel(model_path, num_threads=threads)
    tiles = np.random.default_rng(0).integers(0, 256, (batch, *m.tile_shape), dtype=np.uint8)
    m.predict(tiles)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        m.predict(tiles)
        times.append(time.perf_counter() - t0)
    per_tile = [t / batch for t in times]
    r = {"model": model_path.name, "batch": batch, "threads": threads,
         "tiles_per_s": round(batch * len(times) / sum(times), 1), **percentiles(per_tile)}
    say(f"  {model_path.name:22s} batch {batch:3d} threads {threads}: {r['tiles_per_s']:8.1f} tiles/s, "
        f"p50 {r['p50_ms']:.3f} ms/tile, p95 {r['p95_ms']:.3f}")
    return r


def make_frames(folder: Path, shape: tuple[int, int], n: int) -> None:
    """Real AI4Mars frames tiled into a mosaic of the wanted size (or the bundled clip when no data)."""
    with np.load(bundled("demo_clip.npz")) as z:
        src = z["frames"]
    folder.mkdir(parents=True, exist_ok=True)
    h, w = shape
    for i in range(n):
        reps = (-(-h // 128), -(-w // 128))
        tiles = [src[(i + k) % len(src)] for k in range(reps[0] * reps[1])]
        rows = [np.hstack(tiles[r * reps[1] : (r + 1) * reps[1]]) for r in range(reps[0])]
        cv2.imwrite(str(folder / f"f{i:04d}.png"), np.vstack(rows)[:h, :w])


EDGE_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    from marsseg.edge.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "tensorflow_imported": any(m.split('.')[0] in ('tensorflow', 'keras')
                                                          for m in sys.modules),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def edge_bench(model: Path, shape: tuple[int, int], n: int, work: Path) -> dict:
    folder = work / f"frames_{shape[0]}x{shape[1]}"
    make_frames(folder, shape, n)
    summary = work / f"summary_{shape[0]}x{shape[1]}.json"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", EDGE_PROBE, str(folder), "--model", str(model), "--summary-json",
                        str(summary), "--log-level", "WARNING"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    s = json.loads(summary.read_text())
    stages = s["stage_ms_mean"]
    processing = sum(v for k, v in stages.items() if k != "capture")
    out = {"frame_shape": list(shape), "frames": s["frames"], "fps": s["fps"],
           "latency_ms_mean": s["latency_ms_mean"], "latency_ms_p95": s["latency_ms_p95"], "stage_ms": stages,
           "overhead_ratio_outside_invoke": round(1 - stages["invoke"] / processing, 4),
           "overhead_ratio_incl_file_io": round(1 - stages["invoke"] / sum(stages.values()), 4),
           "process_wall_s": round(wall, 2), "startup_s": round(wall - s["frames"] / max(s["fps"], 1e-9), 2),
           **probe}
    say(f"  {shape[0]}x{shape[1]}: {out['fps']:.1f} fps, latency p95 {out['latency_ms_p95']:.1f} ms, invoke "
        f"{stages['invoke']:.1f} ms, outside invoke {out['overhead_ratio_outside_invoke']:.1%}, peak RSS "
        f"{probe['peak_rss_mb']:.0f} MB, TF imported: {probe['tensorflow_imported']}")
    return out


def serial_bench(model: Path, work: Path) -> list[dict]:
    """Wire bytes of real terrain maps (bundled clip frames and mosaics of them) -> sustainable maps/s at 8N1."""
    from marsseg.edge import protocol as P
    from marsseg.edge.pipeline import Segmenter
    from marsseg.edge.serial_link import grid_message
    from marsseg.edge.sources import Frame
    from marsseg.edge.terrain import CostTable, terrain_grid

    say("serial link (real maps, 8N1 arithmetic: baud / 10 bytes per second)")
    m = TileModel(model)
    seg = Segmenter(m)
    table = CostTable(tuple(m.meta.costs()))
    rows = []
    for shape in ((128, 128), (480, 640), (1024, 1024)):
        folder = work / f"frames_{shape[0]}x{shape[1]}"
        if not folder.is_dir():
            make_frames(folder, shape, 10)
        segmented = []  # copies: the segmenter reuses its output buffers per frame
        for f in sorted(folder.glob("*.png"))[:10]:
            s = seg(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE))
            segmented.append((f.stem, s.mask.copy(), s.confidence.copy()))
        for cell in (8, 16, 32):
            sizes, cells = [], None
            for name, mask, confidence in segmented:
                g = terrain_grid(mask, confidence, (cell, cell), table)
                msg = grid_message(g, 1, Frame(name, 0, time.time(), None), m.meta.num_classes)
                sizes.append(P.wire_size(len(msg.payload())))
                cells = g.shape
            mean = float(np.mean(sizes))
            if max(sizes) > P.MAX_WIRE:
                say(f"  {shape[0]}x{shape[1]} cell {cell}: {cells[0]}x{cells[1]} grid, {mean:.0f} B/map: over the "
                    f"{P.MAX_WIRE}-byte frame limit (the publisher coarsens it)")
                rows.append({"frame_shape": list(shape), "cell": cell, "grid": list(cells),
                             "wire_bytes_mean": round(mean, 1), "over_frame_limit": True})
                continue
            r = {"frame_shape": list(shape), "cell": cell, "grid": list(cells), "wire_bytes_mean": round(mean, 1),
                 "wire_bytes_max": int(max(sizes)),
                 "maps_per_s_115200": round(115200 / 10 / mean, 1), "maps_per_s_921600": round(921600 / 10 / mean, 1)}
            say(f"  {shape[0]}x{shape[1]} cell {cell}: {cells[0]}x{cells[1]} grid, {mean:.0f} B/map (max "
                f"{r['wire_bytes_max']}), maps/s: {r['maps_per_s_115200']} at 115200, "
                f"{r['maps_per_s_921600']} at 921600")
            rows.append(r)
    return rows


def ground_bench(seconds: float) -> list[dict]:
    """The ground cost map per frame (a 1.9-m mast, 30° down, 45° view; the mask at the model's scale) and the
    wire size of its type-3 message, for two cell sizes."""
    from marsseg.edge import protocol as P
    from marsseg.edge.ground import CameraGeometry, GroundLayout, GroundProjector
    from marsseg.edge.serial_link import grid_message
    from marsseg.edge.sources import Frame
    from marsseg.edge.terrain import CostTable

    say("ground cost map (10 m x 10 m ahead)")
    table = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")))
    rng = np.random.default_rng(0)
    rows = []
    for size, cell in (((128, 128), 0.1), ((128, 128), 0.2), ((256, 256), 0.1)):
        t0 = time.perf_counter()
        proj = GroundProjector(CameraGeometry(45, 1.9, 30), GroundLayout(cell=cell), size)
        setup = time.perf_counter() - t0
        mask = (rng.integers(0, 4, (size[1] // 16, size[0] // 16)) + 1).repeat(16, 0).repeat(16, 1).astype(np.uint8)
        conf = np.full(mask.shape, 0.9, np.float32)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            g = proj(mask, conf, table)
            n += 1
        per = (time.perf_counter() - t0) / n
        wire = P.wire_size(len(grid_message(g, 1, Frame("f", 0, 0.0, None), 5).payload()))
        r = {"mask": list(size), "cell_m": cell, "grid": list(g.classes.shape), "setup_ms": round(setup * 1000, 1),
             "ms_per_frame": round(per * 1000, 3), "wire_bytes": wire}
        say(f"  mask {size[0]}x{size[1]}, {cell} m cells: {r['ms_per_frame']} ms/frame (set-up {r['setup_ms']} ms "
            f"once), type-3 message {wire} B")
        rows.append(r)
    return rows


def matmul_peak(seconds: float = 3.0) -> float:
    """float32 GMAC/s of a large BLAS matmul on all cores: the ceiling the model's GMAC/s is compared with."""
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    b = a.T.copy()
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 1024**3 / (time.perf_counter() - t0) / 1e9


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and the SIMD flags that decide int8 speed (dot-product instructions or not)."""
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return name, sorted(flags & SIMD_FLAGS)


def base_result() -> dict:
    """Host, date and machine description that every benchmark JSON starts with."""
    name, simd = cpu_info()
    return {"host": socket.gethostname(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"cpu": name, "simd": simd, "cores": os.cpu_count(), "arch": platform.machine(),
                        "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__}}


@one_line_errors("bench")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export-dir", type=Path, help="folder with model_int8/model_float32 .tflite + .json "
                                                    "(default: the bundled int8 model; float32 from bench/models)")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--quick", action="store_true", help="shorter runs (smoke check)")
    p.add_argument("--serial-only", action="store_true",
                   help="only the serial map sizes (they depend on the model, not on CPU load)")
    a = p.parse_args(argv)
    writable_folder(a.output, "--output")
    secs, frames = (0.5, 4) if a.quick else (4.0, 30)
    int8 = a.export_dir / "model_int8.tflite" if a.export_dir else bundled("model_int8.tflite")
    float32 = (a.export_dir or REPO / "bench" / "models") / "model_float32.tflite"
    result = base_result()
    meta = TileModel(int8).meta
    result["model"] = {"file": str(int8), "sha256": meta.model_sha256, "run_id": meta.run_id,
                       "macs_per_tile": meta.train_metrics.get("macs_per_tile"), "bytes_int8": int8.stat().st_size,
                       "bytes_float32": float32.stat().st_size if float32.is_file() else None}
    if a.serial_only:
        with tempfile.TemporaryDirectory() as tmp:
            result["serial"] = serial_bench(int8, Path(tmp))
        return write_result(result, a.output, "-serial")
    say("interpreter only")
    models = [int8] + ([float32] if float32.is_file() else [])
    result["interpreter"] = [interpreter_bench(m, b, t, secs) for m in models for b in (1, 16) for t in (1, 2)]
    say("end to end (marsseg-edge on PNG frames)")
    with tempfile.TemporaryDirectory() as tmp:
        result["edge"] = [edge_bench(int8, s, frames, Path(tmp)) for s in ((128, 128), (480, 640), (1024, 1024))]
        result["serial"] = serial_bench(int8, Path(tmp))
    result["ground"] = ground_bench(secs / 2)
    say("compute")
    peak = matmul_peak(1.0 if a.quick else 3.0)
    best = max(r["tiles_per_s"] for r in result["interpreter"] if r["model"] == int8.name)
    macs = result["model"]["macs_per_tile"] or 0
    result["compute"] = {"float32_matmul_peak_gmac_s": round(peak, 2),
                         "int8_model_gmac_s": round(best * macs / 1e9, 2),
                         "int8_share_of_float_peak": round(best * macs / 1e9 / peak, 3)}
    say(f"  float32 matmul peak {peak:.1f} GMAC/s; int8 model {result['compute']['int8_model_gmac_s']} GMAC/s "
        f"({result['compute']['int8_share_of_float_peak']:.0%} of it)")
    return write_result(result, a.output)


def write_result(result: dict, folder: Path, suffix: str = "") -> int:
    """`<host>-<date><suffix>.json` in `folder` (checked writable at start with `writable_folder`)."""
    path = folder / f"{result['host']}-{time.strftime('%Y%m%d')}{suffix}.json"
    write_text_atomic(path, json.dumps(result, indent=2))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
