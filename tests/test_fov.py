"""--fov: frames resized to the model's ground scale from the camera's field of view."""

import json

import cv2
import numpy as np
import pytest
from marsseg.edge import sources as S

from tests.test_edge_cli import EDGE, run_edge

NAVCAM = 45.0 / 128  # degrees per pixel of the bundled model's training frames


def test_ground_scale_arithmetic():
    assert S.ground_scale(1024, 45.0, NAVCAM) == pytest.approx(0.125)  # the navcam's own 8x
    assert S.ground_scale(128, 45.0, NAVCAM) == pytest.approx(1.0)
    assert S.ground_scale(1920, 90.0, NAVCAM) == pytest.approx(90 / 1920 / NAVCAM)  # ~0.133: 1920 -> 256 px
    assert S.ground_scale(640, 22.5, NAVCAM) == pytest.approx(0.1)


def test_fine_frame_warning_names_the_flag_only_for_far_finer_frames():
    assert S.fine_frame_warning(128, NAVCAM) is None
    assert S.fine_frame_warning(400, NAVCAM) is None  # a 90° lens over 400 px is close to the model's scale
    text = S.fine_frame_warning(1024, NAVCAM)
    assert text and "--fov DEG" in text and "\n" not in text
    assert S.fine_frame_warning(4096, 0.0) is None  # a model without a recorded ground scale: nothing to compare


def test_bundled_metadata_records_the_ground_scale_and_the_float_model():
    from marsseg.core.io import sha256_file
    from marsseg.edge.cli import bundled

    meta = json.loads(bundled("model_int8.json").read_text())
    assert meta["deg_per_pixel"] == pytest.approx(NAVCAM)
    float_model = bundled(meta["float_model"]["file"])
    assert sha256_file(float_model) == meta["float_model"]["sha256"]


@pytest.fixture
def navcam_clip(tmp_path):
    """The bundled demo clip (real validation frames) brought to navcam size, 1024², by bicubic interpolation."""
    from marsseg.edge.cli import bundled

    with np.load(bundled("demo_clip.npz")) as z:
        frames, masks = z["frames"], z["masks"]
    big = np.stack([cv2.resize(f, (1024, 1024), interpolation=cv2.INTER_CUBIC) for f in frames])
    big_masks = np.stack([cv2.resize(m, (1024, 1024), interpolation=cv2.INTER_NEAREST) for m in masks])
    path = tmp_path / "navcam.npz"
    np.savez(path, frames=big, masks=big_masks)
    return path


def edge_miou(tmp_path, *args) -> tuple[float, str]:
    import subprocess

    summary = tmp_path / f"s{len(list(tmp_path.glob('s*.json')))}.json"
    r = subprocess.run([EDGE, *args, "--summary-json", str(summary)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(summary.read_text())["mean_iou"], r.stderr


def test_navcam_sized_frames_run_at_the_models_ground_scale(navcam_clip, tmp_path):
    """--fov 45 on 1024² frames resizes exactly as --scale 0.125, and the bundled model scores them within 0.02 of
    the native frames (the 1,200 validation frames: 0.709 vs 0.710 for camera-long-v31,
    0.630 vs 0.678 for default-v19, before the camera work: docs/robustness.md)."""
    by_fov, log_fov = edge_miou(tmp_path, "--source", navcam_clip, "--fov", "45")
    by_scale, _ = edge_miou(tmp_path, "--source", navcam_clip, "--scale", "0.125")
    native, _ = edge_miou(tmp_path, "--source", "demo")
    assert by_fov == by_scale and abs(by_fov - native) <= 0.02, (by_fov, native)
    assert "--fov DEG" not in log_fov
    _, log_plain = edge_miou(tmp_path, "--source", navcam_clip, "--max-frames", "3")
    assert log_plain.count("--fov DEG") == 1  # one warning line, not one per frame


def test_fov_errors_are_one_line(tmp_path):
    r = run_edge("--source", "x.png", "--fov", "0")
    assert r.returncode == 2 and "--fov must be in (0, 180), got 0.0 (the camera's horizontal field" in r.stderr
    frames = tmp_path / "f"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((64, 128), np.uint8))
    r = run_edge("--source", frames, "--fov", "45")  # the tiny test model records no ground scale
    assert r.returncode == 2 and "does not record one" in r.stderr and "Traceback" not in r.stderr


def test_navcam_check_names_a_missing_frames_file(tmp_path, capsys):
    from tests.conftest import TINY_MODEL
    from tools import navcam_check

    assert navcam_check.main([str(tmp_path / "none.npz"), "--model", str(TINY_MODEL)]) == 2
    err = capsys.readouterr().err
    assert "frames file not found: " in err and "none.npz" in err and len(err.strip().splitlines()) == 1
