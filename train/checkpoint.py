"""One resumable checkpoint per run (`runs/NAME/checkpoint.npz`), written atomically at the end of every epoch.

It holds every variable of the network being trained (weights, batch-norm statistics, fake-quant ranges, the
dropout layers' seed states) and of its optimizer (step, learning rate, Adam moments, the weight average), plus
the loop's counters as JSON (epochs done, best score and epoch, the plateau schedule's state). The training data
stream is seeded per epoch, so the epoch number is all it needs. `marsseg-train --resume runs/NAME` continues
from it exactly; a missing or damaged checkpoint is an error, never a silent restart from scratch.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
from marsseg.core.io import write_atomic

NAME = "checkpoint.npz"


class ResumeError(ValueError):
    """A run that cannot be resumed; the message names the file and what to do."""


def save(path: Path, net: keras.Model, optimizer: keras.optimizers.Optimizer, state: dict) -> None:
    arrays = {f"net_{i:04d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(net.variables)}
    arrays |= {f"opt_{i:04d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)}
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
    write_atomic(path, lambda p: np.savez(p, **arrays))


def load(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """(network variables, optimizer variables, state) of a checkpoint; ResumeError if missing or damaged."""
    if not path.is_file():
        raise ResumeError(f"{path} not found: this run has no finished epoch to resume from (start it anew)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = sorted(z.files)
            net = [z[k] for k in names if k.startswith("net_")]
            opt = [z[k] for k in names if k.startswith("opt_")]
            state = json.loads(z["state"].tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ResumeError(f"{path} is damaged ({type(e).__name__}: {e}); it cannot be resumed") from e
    return net, opt, state


def restore(net: keras.Model, optimizer: keras.optimizers.Optimizer, net_values: list[np.ndarray],
            opt_values: list[np.ndarray], path: Path) -> None:
    """Put the saved values back into a network and optimizer built from the same config."""
    optimizer.build(net.trainable_variables)
    for what, variables, values in (("network", net.variables, net_values),
                                    ("optimizer", optimizer.variables, opt_values)):
        shapes = [tuple(v.shape) for v in variables]
        if shapes != [a.shape for a in values]:
            raise ResumeError(f"{path}: its {what} variables do not match the run's config.json "
                              f"({len(values)} saved, {len(shapes)} built); was the config edited?")
        for v, a in zip(variables, values, strict=True):
            v.assign(a)
