"""Data-parallel training on Keras' JAX backend: a run split over two devices, or over two processes (a job of
two workers), ends like the same run on one device."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")  # in the [test] extra

from marsseg.train import checkpoint

from tools.make_test_model import TINY

RUN = ["--batch-size", "8", *TINY, "--set", "optim.epochs=2", "--set", "optim.ema=0.9",
       "--set", "data.photometric=0.2", "--set", "data.limit_frames=20"]


def command(frames_file, out, name: str, *extra: str) -> list[str]:
    config = out / "plain.json"
    config.write_text("{}")
    return [sys.executable, "-m", "marsseg.train.cli", "--config", str(config), "--data", str(frames_file),
            "--out-dir", str(out), "--run-name", name, *RUN, *extra]


def environment(devices: int) -> dict:
    return {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def train_on(devices: int, frames_file, out) -> str:
    r = subprocess.run(command(frames_file, out, f"on{devices}"), env=environment(devices), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def job(args: list[str], processes: int = 2) -> list[subprocess.CompletedProcess]:
    """Run `args` as every process of one job on this machine (one CPU device each)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([*args, "--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                               "--process-id", str(k)], env=environment(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(processes)]
    outs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outs, strict=True)]


def assert_same_state(a, b) -> None:
    """Weights, batch-norm statistics, optimizer moments and weight average within float tolerance."""
    one, two = (checkpoint.load(p / "checkpoint.npz") for p in (a, b))
    assert one[2]["epochs_done"] == two[2]["epochs_done"] == 2
    for x, y in zip(one[0] + one[1], two[0] + two[1], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-4)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: the run on one device."""
    out = tmp_path_factory.mktemp("single")
    frames = out / "frames.npz"
    from tests.conftest import synthetic_frames

    f, m = synthetic_frames()
    np.savez_compressed(frames, frames=f, masks=m, names=np.array([f"f{i:03d}" for i in range(len(f))]))
    assert "data-parallel" not in train_on(1, frames, out)
    return frames, out / "on1"


@pytest.mark.slow
def test_two_devices_train_like_one(single, tmp_path):
    """Same global batch (8, 16 training tiles), same seeds (measured: 3e-5 at most)."""
    frames, reference = single
    assert "training data-parallel on 2 cpu devices (JAX)" in train_on(2, frames, tmp_path)
    assert_same_state(reference, tmp_path / "on2")


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(single, tmp_path):
    """A job of two worker processes, paused after its first epoch by its time budget and resumed by both, ends
    like the single-device run; the chief alone writes the run folder, the worker keeps its copy to resume."""
    frames, reference = single
    first = job(command(frames, tmp_path, "job", "--time-budget-min", "0.0001"))
    assert [r.returncode for r in first] == [3, 3], first[0].stderr[-2000:] + first[1].stderr[-2000:]
    assert "training data-parallel on 2 cpu devices (JAX) in 2 processes" in first[0].stderr
    run = tmp_path / "job"
    assert checkpoint.load(run / "checkpoint.npz")[2]["epochs_done"] == 1
    second = job([sys.executable, "-m", "marsseg.train.cli", "--resume", str(run)])
    assert [r.returncode for r in second] == [0, 0], second[0].stderr[-2000:] + second[1].stderr[-2000:]
    assert (run / "metrics.json").is_file() and (run / "workers" / "1" / "metrics.json").is_file()
    assert not (run / "workers" / "0").exists()
    assert [r.stdout.splitlines()[-1] for r in second] == [str(run), str(run / "workers" / "1")]  # each its folder
    assert_same_state(reference, run)
    assert_same_state(run, run / "workers" / "1")
