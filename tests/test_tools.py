"""The measurement tools (python -m tools.X) refuse what a user gets wrong in one line, before any work or output."""

import importlib

import pytest

from tests.conftest import TINY_MODEL


@pytest.mark.parametrize(("tool", "args", "words"), [
    ("bench", ["--export-dir", "{tmp}/none", "--output", "{tmp}/out"], "model file not found"),
    ("bench", ["--output", "{tmp}/file/out"], "--output cannot be created"),
    ("side_by_side", ["--model", "{tmp}/none.tflite", "--output", "{tmp}/out"], "model file not found"),
    ("conv_bench", ["--output", "{tmp}/file/out"], "--output cannot be created"),
    ("soak", ["--frames", "0", "--output", "{tmp}/out"], "--frames takes 1 or more"),
    ("train_bench", ["--config", "{tmp}/none.json", "--output", "{tmp}/out"], "config file not found"),
    ("train_bench", ["--steps", "0", "--output", "{tmp}/out"], "--steps and --batch take 1 or more"),
    ("output_cost", ["--size", "-1"], "--size takes 128"),
    ("float_from_int8", ["{tmp}/none.tflite", "--data", "{tmp}/none.npz", "--out", "{tmp}/out/x.keras"],
     "data file not found"),
    ("camera_sweep", ["{tmp}/none.npz", "gaussian_blur", "sigma", "1", "--model", TINY_MODEL], "frames file not found"),
    ("camera_sweep", ["{tmp}/none.npz", "gaussian_blur", "radius", "1"], "gaussian_blur has no parameter 'radius'"),
    ("camera_sweep", ["{tmp}/none.npz", "gaussian_blur", "sigma", "abc"], "gaussian_blur sigma='abc'"),
    ("camera_sweep", ["{tmp}/none.npz", "jpeg", "quality", "80", "--fixed", "x"], "--fixed takes NAME=VALUE"),
    ("navcam_check", ["{tmp}/none.npz", "--model", TINY_MODEL], "frames file not found"),
    ("mount_check", ["{tmp}/none.npz", "--model", TINY_MODEL], "frames file not found"),
    ("lens_check", ["{tmp}/none.npz", "--model", TINY_MODEL], "frames file not found"),
    ("lens_check", ["{tmp}/none.npz", "--size", "64"], "--size takes 128 or more"),
])
def test_bad_input_is_one_line_and_exit_2(tool, args, words, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    main = importlib.import_module(f"tools.{tool}").main
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's refusals
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and words in err[-1], err
    assert len([line for line in err if "error" in line]) == 1
    assert not [f for f in tmp_path.rglob("*") if f.is_file() and f.name != "file"]  # nothing written


def test_train_bench_writes_no_results_when_every_variant_failed(tmp_path, monkeypatch):
    from tools import train_bench

    monkeypatch.setattr(train_bench, "run_variant", lambda v, *_: {"variant": v, "error": "no kernel"})
    monkeypatch.setattr(train_bench, "matmul_peak", lambda seconds: 1.0)
    assert train_bench.main(["--output", str(tmp_path / "out")]) == 1
    assert not list((tmp_path / "out").iterdir())  # a file of failures would read like a measurement
