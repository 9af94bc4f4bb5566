"""Camera degradations: what a real camera does to a frame that the training file's pipeline never did.

The training frames are MSL navcam images that went 1024² → 256² (JPEG, bilinear) → 128² (2×2 block mean), so
their pixels carry one resampling and compression signature. A rover camera adds its own: defocus, motion during
a drive, read and shot noise, hot and dead pixels, vignetting, sharpening in its processor, whatever kernel
resizes the frame and the JPEG of a downlink. Each function here takes a uint8 grayscale frame (H, W), a
generator (used only by the random ones) and the degradation's parameters in physical units, and returns a new
uint8 frame of the same shape.

Two users, one set of functions (NumPy and OpenCV only, so the edge install runs the benchmark):
- `SUITE`: the benchmark of `marsseg-eval --corruptions`, fixed and documented, three severities each;
- `HELD_OUT`: families in neither the suite nor training (denoising, median, row banding, quantization, WebP),
  a check that the robustness reaches cameras nobody trained for;
- `random_camera`: training's augmentation, a random camera of continuous strength per frame. Its families and
  ranges are wider than the suite's (defocus disks, sharpening, nearest and Lanczos kernels, chained stages):
  the model is meant to learn cameras, not the benchmark's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from marsseg.core.spec import exposure_lut

BORDER = cv2.BORDER_REFLECT_101


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, rng: np.random.Generator | None = None, *, sigma: float) -> np.ndarray:
    """Out of focus (or a soft lens): Gaussian point spread of `sigma` pixels."""
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=BORDER) if sigma > 0 else img.copy()


def defocus(img: np.ndarray, rng: np.random.Generator | None = None, *, radius: float) -> np.ndarray:
    """Out of focus through an aperture: a disk point spread of `radius` pixels, anti-aliased at its rim."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(yy, xx), 0, 1).astype(np.float32)
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=BORDER)


def motion_blur(img: np.ndarray, rng: np.random.Generator | None = None, *, length: float,
                angle: float) -> np.ndarray:
    """The camera moving during the exposure: a line point spread `length` pixels long at `angle` degrees."""
    n = int(np.ceil(length)) | 1
    up = 8  # drawn on an 8x canvas and area-averaged down, so the length is continuous
    canvas = np.zeros((n * up, n * up), np.float32)
    c, half = (n * up - 1) / 2, (length - 1) * up / 2
    dx, dy = half * np.cos(np.radians(angle)), half * np.sin(np.radians(angle))
    cv2.line(canvas, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, up)
    kernel = cv2.resize(canvas, (n, n), interpolation=cv2.INTER_AREA)
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=BORDER)


def sensor_noise(img: np.ndarray, rng: np.random.Generator, *, full_well: float, read: float) -> np.ndarray:
    """Shot noise (Poisson, `full_well` electrons at full scale) plus Gaussian read noise (`read` of 255)."""
    electrons = rng.poisson(img.astype(np.float64) * (full_well / 255.0))
    return _u8(electrons * (255.0 / full_well) + rng.normal(0.0, read, img.shape))


def jpeg(img: np.ndarray, rng: np.random.Generator | None = None, *, quality: float) -> np.ndarray:
    """JPEG compression at `quality` (0-100), as a downlink or a camera's encoder does."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, round(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed at quality {quality}")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


KERNELS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
           "lanczos": cv2.INTER_LANCZOS4}


def resample(img: np.ndarray, rng: np.random.Generator | None = None, *, factor: float, down: str,
             up: str) -> np.ndarray:
    """Down by `factor` with the kernel `down`, back to the same size with `up` (`KERNELS`): another resizer."""
    h, w = img.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(cv2.resize(img, size, interpolation=KERNELS[down]), (w, h), interpolation=KERNELS[up])


def exposure(img: np.ndarray, rng: np.random.Generator | None = None, *, gamma: float, gain: float,
             offset: float) -> np.ndarray:
    """A change of exposure or contrast (`spec.exposure_lut`)."""
    return exposure_lut(gamma, gain, offset)[img]


def vignetting(img: np.ndarray, rng: np.random.Generator | None = None, *, strength: float) -> np.ndarray:
    """Light falling off towards the corners: gain 1 - strength * r², r = 1 at the corners."""
    h, w = img.shape
    yy, xx = np.ogrid[:h, :w]
    r2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2)
    return _u8(img * (1.0 - strength * r2))


def hot_dead_pixels(img: np.ndarray, rng: np.random.Generator, *, fraction: float) -> np.ndarray:
    """`fraction` of the pixels stuck: half of them hot (255), half dead (0)."""
    out = img.copy()
    n = rng.binomial(img.size, fraction)
    where = rng.choice(img.size, size=n, replace=False)
    out.reshape(-1)[where] = np.where(rng.random(n) < 0.5, 255, 0)
    return out


def sharpen(img: np.ndarray, rng: np.random.Generator | None = None, *, amount: float, sigma: float) -> np.ndarray:
    """A camera processor's unsharp mask: img + amount * (img - blur(img, sigma))."""
    blur = cv2.GaussianBlur(img, (0, 0), sigma, borderType=BORDER).astype(np.float32)
    return _u8(img + amount * (img - blur))


def bilateral(img: np.ndarray, rng: np.random.Generator | None = None, *, sigma_color: float,
              sigma_space: float) -> np.ndarray:
    """Edge-preserving noise reduction (bilateral filter): smooths differences below ~`sigma_color` grey levels
    within ~`sigma_space` pixels, so fine texture goes while edges stay (a blur takes both)."""
    return cv2.bilateralFilter(img, 0, sigma_color, sigma_space, borderType=BORDER)


def denoise(img: np.ndarray, rng: np.random.Generator | None = None, *, h: float) -> np.ndarray:
    """A camera processor's noise reduction (non-local means, filter strength `h`): flattens fine texture while
    keeping edges, unlike a blur."""
    return cv2.fastNlMeansDenoising(img, None, h=h, templateWindowSize=5, searchWindowSize=11)


def median(img: np.ndarray, rng: np.random.Generator | None = None, *, size: int) -> np.ndarray:
    """A median filter of `size` (odd) pixels, as processors use against impulse noise."""
    return cv2.medianBlur(img, size)


def row_banding(img: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
    """Row fixed-pattern noise of a rolling readout: each row offset by its own Gaussian draw (`sigma` of 255)."""
    return _u8(img + rng.normal(0.0, sigma, (img.shape[0], 1)))


def quantize(img: np.ndarray, rng: np.random.Generator | None = None, *, bits: int) -> np.ndarray:
    """Fewer grey levels (`bits` per pixel, mid-rise): a coarse tone mapping or a low-bit-depth link."""
    step = 256 >> bits
    return (img // step * step + step // 2).astype(np.uint8)


def webp(img: np.ndarray, rng: np.random.Generator | None = None, *, quality: float) -> np.ndarray:
    """WebP compression at `quality` (0-100): another codec's artefacts than JPEG's 8×8 blocks."""
    ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, round(quality)])
    if not ok:
        raise ValueError(f"WebP encoding failed at quality {quality}")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


MOTION_ANGLES = (0.0, 45.0, 90.0, 135.0)


def motion_any_direction(img: np.ndarray, rng: np.random.Generator, *, length: float) -> np.ndarray:
    """Motion blur along one of `MOTION_ANGLES`, drawn per frame."""
    return motion_blur(img, length=length, angle=float(rng.choice(MOTION_ANGLES)))


@dataclass(frozen=True)
class Corruption:
    """One benchmark degradation: a function and its parameters at severities 1, 2, 3 (mild, typical, harsh)."""

    name: str
    apply: Callable[..., np.ndarray]
    severities: tuple[dict, dict, dict]

    def __call__(self, img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        return self.apply(img, rng, **self.severities[severity - 1])


def _resampling(kernel: str) -> tuple[dict, dict, dict]:
    return tuple({"factor": f, "down": kernel, "up": kernel} for f in (1.5, 2.0, 2.5))


# Severities are in pixels of the model's ground scale (the frames the model sees). Severity 2 of the three exposure
# changes is the one `--exposure` used before this suite (and the bundled model card's exposure figures).
SUITE: tuple[Corruption, ...] = (
    Corruption("gaussian-blur", gaussian_blur, ({"sigma": 0.5}, {"sigma": 1.0}, {"sigma": 1.5})),
    Corruption("motion-blur", motion_any_direction, ({"length": 3.0}, {"length": 5.0}, {"length": 7.0})),
    Corruption("sensor-noise", sensor_noise, ({"full_well": 4000.0, "read": 1.0}, {"full_well": 1200.0, "read": 2.0},
                                              {"full_well": 400.0, "read": 3.0})),
    Corruption("jpeg", jpeg, ({"quality": 80}, {"quality": 60}, {"quality": 40})),
    Corruption("resample-area", resample, _resampling("area")),
    Corruption("resample-linear", resample, _resampling("linear")),
    Corruption("resample-cubic", resample, _resampling("cubic")),
    Corruption("dark", exposure, tuple({"gamma": g, "gain": k, "offset": 0.0}
                                       for g, k in ((1.12, 0.9), (1.25, 0.8), (1.4, 0.7)))),
    Corruption("bright", exposure, tuple({"gamma": g, "gain": k, "offset": 0.0}
                                         for g, k in ((0.9, 1.12), (0.8, 1.25), (0.7, 1.4)))),
    Corruption("low-contrast", exposure, tuple({"gamma": 1.0, "gain": k, "offset": o}
                                               for k, o in ((0.85, 0.05), (0.7, 0.1), (0.55, 0.15)))),
    Corruption("vignetting", vignetting, ({"strength": 0.2}, {"strength": 0.4}, {"strength": 0.6})),
    Corruption("hot-dead-pixels", hot_dead_pixels, ({"fraction": 0.001}, {"fraction": 0.003}, {"fraction": 0.01})),
)
# Families neither the benchmark nor training's random camera has: how far the robustness generalises to a camera
# nobody trained for (`marsseg-eval --corruptions held-out`).
HELD_OUT: tuple[Corruption, ...] = (
    Corruption("denoise", denoise, ({"h": 4.0}, {"h": 8.0}, {"h": 12.0})),
    Corruption("median", median, ({"size": 3}, {"size": 5}, {"size": 7})),
    Corruption("row-banding", row_banding, ({"sigma": 1.0}, {"sigma": 2.5}, {"sigma": 5.0})),
    Corruption("quantize", quantize, ({"bits": 6}, {"bits": 5}, {"bits": 4})),
    Corruption("webp", webp, ({"quality": 80}, {"quality": 60}, {"quality": 40})),
)
ALL: tuple[Corruption, ...] = (*SUITE, *HELD_OUT)  # index = the corruption's seed key; append, never reorder
BY_NAME = {c.name: c for c in ALL}
GROUPS = {"suite": tuple(c.name for c in SUITE), "held-out": tuple(c.name for c in HELD_OUT)}


def corrupt_frames(frames: np.ndarray, corruption: Corruption, severity: int, seed: int = 0) -> np.ndarray:
    """`corruption` at `severity` on every frame; frame i draws from its own generator (seed, corruption, severity,
    i), so a frame's result does not depend on which other frames are evaluated with it."""
    key = ALL.index(corruption)
    return np.stack([corruption(f, severity, np.random.default_rng((seed, key, severity, i)))
                     for i, f in enumerate(frames)])


P_STAGE = 0.3  # chance of each stage below on the other frames (at least one is applied)


def _stages(rng: np.random.Generator, s: float) -> list[tuple[Callable[..., np.ndarray], dict]]:
    """A random camera, in the order light meets it: optics, motion, vignetting, sensor, processor (noise
    reduction, sharpening), resize, codec."""
    blur = ((gaussian_blur, {"sigma": rng.uniform(0.2, 0.2 + 1.6 * s)}) if rng.random() < 0.5
            else (defocus, {"radius": rng.uniform(0.5, 0.5 + 2.0 * s)}))
    fewest = 20000.0 ** (1 - min(s, 1.0)) * 150.0 ** min(s, 1.0)  # electrons at full scale: 20,000 down to 150
    full_well = float(np.exp(rng.uniform(np.log(fewest), np.log(20000.0))))
    return [
        blur,
        (motion_blur, {"length": rng.uniform(1.5, 1.5 + 8.0 * s), "angle": rng.uniform(0, 180)}),
        (vignetting, {"strength": rng.uniform(0, 0.7 * s)}),
        (sensor_noise, {"full_well": full_well, "read": rng.uniform(0, 5.0 * s)}),
        (hot_dead_pixels, {"fraction": float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-4 + 0.02 * s))))}),
        (bilateral, {"sigma_color": rng.uniform(3.0, 3.0 + 37.0 * s), "sigma_space": rng.uniform(0.5, 0.5 + 2.5 * s)}),
        (sharpen, {"amount": rng.uniform(0.2, 0.2 + 1.5 * s), "sigma": rng.uniform(0.5, 2.0)}),
        (resample, {"factor": rng.uniform(1.1, 1.1 + 2.4 * s), "down": str(rng.choice(list(KERNELS))),
                    "up": str(rng.choice(list(KERNELS)))}),
        (jpeg, {"quality": rng.uniform(max(95 - 75 * s, 5), 95)}),
    ]


def random_camera(img: np.ndarray, rng: np.random.Generator, strength: float, untouched: float) -> np.ndarray:
    """One frame through a random camera of continuous `strength` (0 = untouched, 1 = the documented ranges).

    A share `untouched` of the frames pass as they are (the training pipeline is one camera too); each of the
    others gets each stage of `_stages` with probability `P_STAGE` (at least one), with parameters drawn uniformly
    up to `strength` times the widest setting.
    """
    if strength <= 0 or rng.random() < untouched:
        return img
    stages = _stages(rng, strength)
    chosen = rng.random(len(stages)) < P_STAGE
    if not chosen.any():
        chosen[rng.integers(len(stages))] = True
    for (fn, params), on in zip(stages, chosen, strict=True):
        if on:
            img = fn(img, rng, **params)
    return img
