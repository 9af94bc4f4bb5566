"""Lens distortion: a calibrated camera's frames made pinhole before anything else (`--camera-info`).

The model learnt from navcam frames, whose straight edges stay straight, and the ground cost map projects a pinhole
image onto flat ground; a wide or cheap lens bends both. The calibration is the one a robot already has: ROS's
`camera_info` YAML (`camera_calibration`'s output) or OpenCV's calibration file (`cv2.FileStorage` YAML, XML or
JSON with `camera_matrix` and `distortion_coefficients`), read with OpenCV's own parser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FISHEYE = ("equidistant", "fisheye")  # ROS's and OpenCV's names of the fisheye model (cv2.fisheye)
PINHOLE = ("plumb_bob", "rational_polynomial", "")  # cv2.undistort's models: 4, 5, 8, 12 or 14 coefficients


@dataclass
class Lens:
    """A calibrated camera of `width`×`height` frames; `pinhole` is the camera matrix its frames are undistorted to
    (square pixels, principal point at the frame's centre as the ground map assumes, every pixel inside the
    delivered frame)."""

    width: int
    height: int
    matrix: np.ndarray
    distortion: np.ndarray
    model: str
    pinhole: np.ndarray = field(init=False)
    _maps: dict = field(init=False, default_factory=dict)  # (w, h) -> remap tables, made once per frame size

    def __post_init__(self) -> None:
        k, d, size = self.matrix, self.distortion, (self.width, self.height)
        if self.model in FISHEYE:
            new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(k, d[:4], size, np.eye(3), balance=0.0)
        else:
            new, _ = cv2.getOptimalNewCameraMatrix(k, d, size, 0, size, centerPrincipalPoint=True)
        f = max(new[0, 0], new[1, 1])  # the larger focal length: a square-pixel zoom that stays inside the frame
        self.pinhole = np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1]])

    @property
    def hfov(self) -> float:
        """Horizontal field of view of the undistorted frames, degrees: what `--fov` is for an uncalibrated camera."""
        return math.degrees(2 * math.atan(self.width / 2 / self.pinhole[0, 0]))

    @classmethod
    def load(cls, path: str | Path) -> Lens:
        """Read a ROS camera_info or OpenCV calibration file; ValueError naming the file and what is wrong."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"camera calibration {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from e
        if not text.lstrip().startswith(("%YAML", "<?xml", "{")):  # ROS writes YAML without the directive
            text = "%YAML:1.0\n" + text
        try:
            fs = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
            root = fs.root()
            values = {k: _numbers(root.getNode(k)) for k in ("image_width", "image_height", "camera_matrix",
                                                            "distortion_coefficients")}
            model = root.getNode("distortion_model").string() if not root.getNode("distortion_model").empty() else ""
        except (cv2.error, SystemError) as e:  # a parse error reaches Python as a SystemError around the cv2.error
            why = str(e.__cause__ or e).strip().splitlines()[-1].rsplit("error: ", 1)[-1]
            raise ValueError(f"camera calibration {path}: not camera_info or an OpenCV calibration: {why}") from None
        missing = [k for k, v in values.items() if v.size == 0]
        if missing:
            raise ValueError(f"camera calibration {path}: no {', '.join(missing)} (a ROS camera_info YAML or an OpenCV "
                             "calibration file has image_width, image_height, camera_matrix, distortion_coefficients)")
        k, d = values["camera_matrix"], values["distortion_coefficients"].ravel().astype(np.float64)
        width, height = int(values["image_width"].ravel()[0]), int(values["image_height"].ravel()[0])
        if model not in FISHEYE + PINHOLE:
            raise ValueError(f"camera calibration {path}: distortion_model {model!r} is not supported "
                             f"({', '.join(m for m in FISHEYE + PINHOLE if m)})")
        if k.size != 9 or not (k.reshape(3, 3)[0, 0] > 0 and k.reshape(3, 3)[1, 1] > 0) or min(width, height) < 1:
            raise ValueError(f"camera calibration {path}: camera_matrix must be 3x3 with positive focal lengths and "
                             f"the image size positive, got {k.ravel().tolist()} for {width}x{height}")
        if d.size not in ((4,) if model in FISHEYE else (0, 4, 5, 8, 12, 14)):
            raise ValueError(f"camera calibration {path}: {d.size} distortion coefficients do not fit the "
                             f"{model or 'plumb_bob'} model")
        return cls(width, height, k.reshape(3, 3).astype(np.float64), d, model)

    def undistort(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """The frame as the pinhole camera would see it, same size; `nearest` for class masks. A frame of another
        size with the calibration's aspect is a resized delivery and is scaled to it; ValueError otherwise."""
        h, w = image.shape[:2]
        if (w, h) not in self._maps:
            if abs(w * self.height - h * self.width) > max(self.width, self.height):
                raise ValueError(f"frame {w}x{h} does not have the aspect of the camera calibration's "
                                 f"{self.width}x{self.height}; calibrate the camera at this resolution")
            sx, sy = w / self.width, h / self.height  # OpenCV's pixel centres are integers: u + 0.5 scales
            s = np.array([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2], [0, 0, 1]])
            k, new = s @ self.matrix, s @ self.pinhole
            if self.model in FISHEYE:
                maps = cv2.fisheye.initUndistortRectifyMap(k, self.distortion, np.eye(3), new, (w, h), cv2.CV_16SC2)
            else:
                maps = cv2.initUndistortRectifyMap(k, self.distortion, None, new, (w, h), cv2.CV_16SC2)
            self._maps[(w, h)] = maps
        return cv2.remap(image, *self._maps[(w, h)], cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)


def _numbers(node: cv2.FileNode) -> np.ndarray:
    """A number, an OpenCV matrix (`!!opencv-matrix`) or ROS's {rows, cols, data} map as an array; empty if absent."""
    if node.empty() or node.isNone():
        return np.zeros(0)
    if node.isInt() or node.isReal():
        return np.array([node.real()])
    if node.isMap() and not node.getNode("dt").empty():  # OpenCV's matrix
        return np.asarray(node.mat(), np.float64)
    if node.isMap():  # ROS's
        node = node.getNode("data")
    return np.array([node.at(i).real() for i in range(node.size())]) if node.isSeq() else np.zeros(0)
