"""Data-parallel training on Keras' JAX backend: a run split over two devices ends like the same run on one."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")  # in the [test] extra

from marsseg.train import checkpoint

from tools.make_test_model import TINY


def train_on(devices: int, frames_file, out) -> str:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    config = out / "plain.json"
    config.write_text("{}")
    r = subprocess.run([sys.executable, "-m", "marsseg.train.cli", "--config", str(config), "--data", str(frames_file),
                        "--out-dir", str(out), "--run-name", f"on{devices}", "--batch-size", "8", *TINY,
                        "--set", "optim.epochs=2", "--set", "optim.ema=0.9", "--set", "data.photometric=0.2",
                        "--set", "data.limit_frames=20"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


@pytest.mark.slow
def test_two_devices_train_like_one(frames_file, tmp_path):
    """Same global batch (8, 16 training tiles), same seeds: weights, batch-norm statistics, optimizer moments and
    weight average agree after two epochs within float tolerance (measured: 3e-5 at most)."""
    assert "data-parallel" not in train_on(1, frames_file, tmp_path)
    assert "training data-parallel on 2 cpu devices (JAX)" in train_on(2, frames_file, tmp_path)
    one, two = (checkpoint.load(tmp_path / f"on{n}" / "checkpoint.npz") for n in (1, 2))
    assert one[2]["epochs_done"] == two[2]["epochs_done"] == 2
    for a, b in zip(one[0] + one[1], two[0] + two[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)
