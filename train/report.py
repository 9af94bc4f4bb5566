"""Pictures people would rather look at than read: curves, confusion matrix, prediction grids."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from marsseg.core.io import write_atomic
from marsseg.core.spec import CLASS_NAMES, CLASSES
from marsseg.edge.render import colourize, palette

LUT = palette([c.colour for c in CLASSES])


def _save(fig, path: Path) -> None:
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_curves(history_csv: Path, path: Path, phase_names: tuple[str, ...] = ()) -> None:
    """Loss and validation mean IoU (clean and through cameras) per epoch of every phase, from history.csv; the
    phases are numbered on one axis, a dotted line where each begins."""
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = np.arange(1, len(rows) + 1)
    phases = [int(float(r.get("phase", 0))) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            a.plot(epochs, [float(r[key]) for r in rows], label=key)
    for key in [k for k in rows[0] if k.startswith("val_iou_") or k in ("val_miou", "val_miou_camera")]:
        b.plot(epochs, [float(r[key]) for r in rows], label=key, lw=2.5 if key.startswith("val_miou") else 1)
    for ax in (a, b):
        for i in range(1, len(rows)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", ls=":", lw=1)
        if len(set(phases)) > 1:
            for k in sorted(set(phases)):
                first = phases.index(k) + 1
                name = phase_names[k] if k < len(phase_names) else f"phase {k + 1}"
                ax.text(first, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_xlabel("epoch (all phases)")
    a.set_title("loss"), a.legend()
    b.set_title("validation IoU (background ignored)"), b.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(cm: np.ndarray, path: Path, title: str = "validation confusion (row-normalised)") -> None:
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    for (i, j), v in np.ndenumerate(norm):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def plot_predictions(x: np.ndarray, y: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """Rows of image / ground truth / prediction for a few validation tiles."""
    n = len(x)
    fig, axes = plt.subplots(n, 3, figsize=(9, 1.6 * n), squeeze=False)
    for i in range(n):
        for ax, img, title in zip(
            axes[i], (x[i], colourize(y[i], LUT), colourize(pred[i], LUT)), ("image", "truth", "prediction"),
            strict=True,
        ):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    _save(fig, path)
