"""--camera-info: a calibrated lens's frames undistorted to the pinhole view the model and the ground map assume."""

import math

import cv2
import numpy as np
import pytest
from marsseg.edge.ground import CameraGeometry
from marsseg.edge.lens import Lens

from tests.test_edge_cli import run_edge
from tests.test_ground import checker, render

SIZE = (320, 240)
K = [[260.0, 0, 161.0], [0, 258.0, 118.0], [0, 0, 1]]  # a ~63° lens, principal point off centre
WIDE = [-0.32, 0.11, 0.001, -0.0005, -0.015]  # barrel distortion of a cheap wide lens (plumb_bob)
FISH = [0.05, -0.02, 0.004, -0.001]  # equidistant (fisheye) coefficients


def camera_info(path, distortion, model="plumb_bob"):
    """A ROS camera_info YAML, as `camera_calibration` writes it."""
    path.write_text(f"""image_width: {SIZE[0]}
image_height: {SIZE[1]}
camera_name: navcam
camera_matrix:
  rows: 3
  cols: 3
  data: {np.ravel(K).tolist()}
distortion_model: {model}
distortion_coefficients:
  rows: 1
  cols: {len(distortion)}
  data: {distortion}
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
""")
    return path


def through_lens(lens: Lens, g: CameraGeometry) -> np.ndarray:
    """The checkerboard ground as the distorted camera delivers it: each pixel's ray through the lens model (OpenCV's
    undistortPoints), cast onto the ground; the camera's pose as in tests/test_ground.py."""
    w, h = lens.width, lens.height
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    if lens.model == "equidistant":
        xy = cv2.fisheye.undistortPoints(pts, lens.matrix, lens.distortion)
    else:
        xy = cv2.undistortPoints(pts, lens.matrix, lens.distortion)
    rays = np.concatenate([xy.reshape(h, w, 2), np.ones((h, w, 1))], -1) @ g.rotation()
    down = rays[..., 2] < 0
    t = np.where(down, -g.height / np.where(down, rays[..., 2], -1), 0)
    return np.where(down, checker(t * rays[..., 0], t * rays[..., 1]), 0).astype(np.uint8)


@pytest.mark.parametrize(("distortion", "model"), [(WIDE, "plumb_bob"), (FISH, "equidistant")])
def test_undistorted_frames_are_the_pinhole_view(tmp_path, distortion, model):
    lens = Lens.load(camera_info(tmp_path / "cam.yaml", distortion, model))
    g = CameraGeometry(lens.hfov, 1.9, 30)  # the same pose; the pinhole camera the lens is undistorted to
    pinhole = render(g, SIZE)
    delivered = through_lens(lens, g)
    inside = cv2.erode(pinhole, np.ones((5, 5), np.uint8)) == cv2.dilate(pinhole, np.ones((5, 5), np.uint8))
    assert inside.mean() > 0.3  # pixels 2 or more from a square's edge, where resampling cannot change the class
    assert (delivered != pinhole)[inside].mean() > 0.03  # the lens moves the squares (4.4% of these pixels)
    assert (lens.undistort(delivered, nearest=True) != pinhole)[inside].mean() < 0.001
    half = lens.undistort(delivered[::2, ::2], nearest=True)  # the same camera delivering half-size frames
    assert (half != pinhole[::2, ::2])[inside[::2, ::2]].mean() < 0.01


def test_opencv_and_ros_calibration_files_read_alike(tmp_path):
    ros = Lens.load(camera_info(tmp_path / "ros.yaml", WIDE))
    for name in ("cv.yaml", "cv.xml", "cv.json"):
        fs = cv2.FileStorage(str(tmp_path / name), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", SIZE[0])
        fs.write("image_height", SIZE[1])
        fs.write("camera_matrix", np.array(K))
        fs.write("distortion_coefficients", np.array(WIDE))
        fs.release()
        cv = Lens.load(tmp_path / name)
        np.testing.assert_array_equal(cv.matrix, ros.matrix)
        np.testing.assert_array_equal(cv.distortion, ros.distortion)
    assert 60 < ros.hfov < 70 and ros.model == "plumb_bob"
    f = SIZE[0] / 2 / math.tan(math.radians(ros.hfov) / 2)
    np.testing.assert_allclose(ros.pinhole, [[f, 0, 159.5], [0, f, 119.5], [0, 0, 1]])


@pytest.mark.parametrize(("text", "words"), [
    (None, "cannot read it"),
    ("image_width: [1, 2\n", "not camera_info or an OpenCV calibration"),
    ("image_width: 320\n", "no image_height, camera_matrix, distortion_coefficients"),
    ("MODEL", "distortion_model 'kannala' is not supported"),
    ("COEFFS", "3 distortion coefficients do not fit the plumb_bob model"),
])
def test_a_bad_calibration_is_one_line(tmp_path, text, words):
    path = tmp_path / "cam.yaml"
    if text == "MODEL":
        camera_info(path, WIDE, "kannala")
    elif text == "COEFFS":
        camera_info(path, WIDE[:3])
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=words) as e:
        Lens.load(path)
    assert "\n" not in str(e.value)


def test_the_runtime_maps_a_distorted_camera_as_its_pinhole_view(tmp_path):
    """End to end: a frame delivered through the wide lens, run with --camera-info, gives the ground map of the
    pinhole view; the same frame given only a --fov lands squares in the wrong cells."""
    from marsseg.edge.cli import main

    from tests.conftest import TINY_MODEL

    lens = Lens.load(camera_info(tmp_path / "cam.yaml", WIDE))
    g = CameraGeometry(lens.hfov, 1.9, 30)
    maps = {}
    for name, image, flags in (("pinhole", render(g, SIZE), ["--fov", str(lens.hfov)]),
                               ("calibrated", through_lens(lens, g), ["--camera-info", str(tmp_path / "cam.yaml")]),
                               ("uncalibrated", through_lens(lens, g), ["--fov", str(lens.hfov)])):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), image * 60)
        assert main([str(tmp_path / name), str(tmp_path / f"{name}-out"), "--model", str(TINY_MODEL), "--npz",
                     "--scale", "0.5", "--camera-height", "1.9", "--camera-pitch", "30", *flags]) == 0
        with np.load(tmp_path / f"{name}-out" / "a_map.npz") as z:
            maps[name] = z["ground_classes"], z["ground_seen"]
    seen = maps["pinhole"][1] & maps["calibrated"][1]
    agree = {k: (maps[k][0] == maps["pinhole"][0])[seen].mean() for k in ("calibrated", "uncalibrated")}
    assert agree["calibrated"] > 0.92 and agree["uncalibrated"] < agree["calibrated"] - 0.07, agree  # .94, .83


def test_calibration_errors_stop_the_runtime_before_the_first_frame(tmp_path):
    frames = tmp_path / "f"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((64, 128), np.uint8))
    r = run_edge("--source", frames, "--camera-info", tmp_path / "none.yaml", "--output", tmp_path / "out")
    assert r.returncode == 2 and "camera calibration" in r.stderr and "cannot read it" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()  # refused with the config, before outputs
    r = run_edge("--source", frames, "--camera-info", camera_info(tmp_path / "cam.yaml", WIDE), "--fov", "45")
    assert r.returncode == 2 and "give either --fov or --camera-info" in r.stderr
