"""Export of a tiny trained model end to end through the real CLIs, the accuracy gate, and error cases."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from marsseg.core import interpreter as it
from marsseg.core.io import sha256_file
from marsseg.core.metadata import load_metadata
from marsseg.export.cli import main as export_main

from tools.make_test_model import export_tiny, train_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("run"))


@pytest.mark.slow
def test_export_writes_int8_model_metadata_and_report(tiny_run):
    out = tiny_run.parent / "export-ok"
    assert export_tiny(tiny_run, out) == 0
    model = out / "model_int8.tflite"
    interp = it.make_interpreter(model)
    assert it.input_info(interp).dtype == np.int8 and it.output_info(interp).dtype == np.int8
    meta = load_metadata(out / "model_int8.json")
    assert tuple(meta.tile_shape) == (64, 128)
    assert meta.class_names == ("background", "soil", "bedrock", "sand", "big_rock")
    assert meta.input_quant.dtype == "int8" and meta.output_quant.zero_point == -128
    assert meta.run_id == "tiny" and "mean_iou" in meta.train_metrics
    assert meta.model_sha256 == load_metadata(out / "model_int8.json").model_sha256
    assert meta.deg_per_pixel == pytest.approx(45 / 128)  # the run's ground scale, for marsseg-edge --fov
    shipped = out / meta.float_model["file"]  # the float weights ship beside the int8 model, without optimizer state
    assert sha256_file(shipped) == meta.float_model["sha256"]
    import keras

    reloaded = keras.saving.load_model(shipped)
    assert getattr(reloaded, "optimizer", None) is None
    assert reloaded.count_params() == keras.saving.load_model(tiny_run).count_params()
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["op_report"]["problems"] == []
    assert "CONV_2D" in report["op_report"]["ops"] and "DELEGATE" not in report["op_report"]["ops"]
    names = [r["name"] for r in report["results"]]
    assert names == ["keras_float32", "tflite_float32", "tflite_int8"]
    assert report["results"][1]["argmax_agreement"] > 0.99  # float TFLite == Keras
    assert (out / "model_float32.tflite").is_file() and (out / "export_iou.png").is_file()
    assert not (out / "model_int8.candidate.tflite").exists()


@pytest.mark.slow
def test_float_model_rebuilt_from_the_int8_export_computes_the_same_function(tiny_run):
    """tools.float_from_int8: the int8 weights, dequantized into a trainable float model, answer like the int8 model,
    in inference and (batch norm re-parameterised on measured statistics) in a training-mode forward pass."""
    import keras
    from marsseg.core.spec import preprocess
    from marsseg.edge.model import TileModel
    from marsseg.train.config import TrainConfig

    from tests.conftest import synthetic_frames
    from tools.float_from_int8 import rebuild

    out = tiny_run.parent / "export-rebuild"
    assert export_tiny(tiny_run, out) == 0
    cfg = TrainConfig.load(tiny_run.parent / "config.json").model
    tiles = synthetic_frames(n=48, seed=3)[0][:, 32:96]
    model = rebuild(out / "model_int8.tflite", cfg, tiles[:32], np.zeros(5, np.float32))
    int8 = TileModel(out / "model_int8.tflite").predict(tiles[32:]).copy()
    same = (np.asarray(model.predict(preprocess(tiles[32:]), verbose=0)).argmax(-1) == int8.argmax(-1)).mean()
    trained = keras.saving.load_model(tiny_run, compile=False)
    assert same > 0.97
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    train_mode = np.asarray(model(preprocess(tiles[:32]), training=True)).argmax(-1)
    assert (train_mode == np.asarray(model(preprocess(tiles[:32]))).argmax(-1)).mean() > 0.95
    assert model.count_params() == trained.count_params()


@pytest.mark.slow
def test_gate_fails_on_broken_calibration(tiny_run, capsys):
    out = tiny_run.parent / "export-broken"
    rc = export_tiny(tiny_run, out, calibration=np.zeros((16, 64, 128), np.uint8))  # all-black calibration
    assert rc == 1
    report = json.loads((out / "export_report.json").read_text())
    assert not report["passed"]
    assert report["int8_drop_points"] > report["budget_points"]  # measured: ~45 points lost
    assert not (out / "model_int8.tflite").exists()  # the rejected model is never published
    assert (out / "model_int8.candidate.tflite").exists()


def test_fixture_tool_writes_where_told_and_help_writes_nothing(tiny_run, tmp_path, monkeypatch):
    import tools.make_test_model as tool

    fixtures = {f: f.read_bytes() for f in (Path(tool.__file__).parents[1] / "tests" / "fixtures").glob("tiny*")}
    with pytest.raises(SystemExit) as e:  # --help once started a training that overwrote the suite's fixture
        tool.main(["--help"])
    assert e.value.code == 0
    monkeypatch.setattr(tool, "train_tiny", lambda work: tiny_run)  # the trained tiny run; the export is real
    assert tool.main(["--output", str(tmp_path / "fx")]) == 0
    meta = json.loads((tmp_path / "fx" / "tiny_int8.json").read_text())
    assert meta["model_file"] == "tiny_int8.tflite"
    assert sha256_file(tmp_path / "fx" / "tiny_int8.tflite") == meta["model_sha256"]
    assert {f: f.read_bytes() for f in fixtures} == fixtures  # the suite's own fixture untouched


def test_missing_model(tmp_path, capsys):
    assert export_main(["--model", str(tmp_path / "none.keras")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04garbage")
    assert export_main(["--model", str(bad)]) == 2
    assert "not a loadable .keras model" in capsys.readouterr().err


def test_wrong_input_shape(tmp_path, capsys):
    import keras

    inp = keras.Input((32, 32, 1))
    m = keras.Model(inp, keras.layers.Conv2D(5, 1, activation="softmax")(inp))
    m.save(tmp_path / "m.keras")
    assert export_main(["--model", str(tmp_path / "m.keras")]) == 2
    assert "expected (None, 64, 128, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "words"), [
    (["--budget", "-1"], "--budget is the int8 mean-IoU loss allowed"),
    (["--calibration", "{tmp}/none.npz"], "calibration file not found"),
    (["--output", "{tmp}/file/out"], "cannot be created"),  # under a file
])
def test_bad_options_are_one_line_before_the_conversion(tiny_run, tmp_path, capsys, args, words):
    (tmp_path / "file").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert export_main(["--model", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_calibrate_writes_the_tiles_and_refuses_a_bad_count_or_folder(frames_file, tmp_path, capsys):
    out = tmp_path / "cal" / "tiles.npz"
    assert export_main(["calibrate", "--data", str(frames_file), "--out", str(out), "--n", "8"]) == 0
    with np.load(out) as z:
        assert z["tiles"].shape == (8, 64, 128) and z["tiles"].dtype == np.uint8 and len(z["masks"]) == 8
    before = out.read_bytes()
    for args, words in ((["--n", "0"], "--n 0: the calibration set takes 1 to"),
                        (["--n", "100000"], "--n 100000: the calibration set takes 1 to"),
                        (["--out", str(out / "x.npz")], "cannot be created")):  # its folder would be a file
        assert export_main(["calibrate", "--data", str(frames_file), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before  # nothing overwritten by a refused run


def test_no_runs(tmp_path, capsys):
    assert export_main(["--runs", str(tmp_path)]) == 2
    assert "no trained model" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_trained_on_jax_without_tensorflow_exports_here(tmp_path):
    """The GPU path of docs/training.md: train on Keras' JAX backend where TensorFlow is absent, bring the run folder
    back, export it with TensorFlow; the export's float model scores what the JAX run reported on the same tiles."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import import_blocker, synthetic_frames
    from tools.make_test_model import TINY, single_phase

    frames, masks = synthetic_frames(n=48)
    np.savez_compressed(tmp_path / "frames.npz", frames=frames, masks=masks)
    train = import_blocker(("tensorflow", "tf_keras"), why="as on a machine without TensorFlow") + textwrap.dedent("""
        from marsseg.train.cli import main
        rc = main(sys.argv[1:])
        assert not any(k.split(".")[0] == "tensorflow" for k in sys.modules), "TensorFlow got imported"
        sys.exit(rc)
    """)
    args = ["--data", str(tmp_path / "frames.npz"), "--batch-size", "8", "--out-dir", str(tmp_path / "runs"),
            "--run-name", "on-jax", *TINY, *single_phase(2)]
    r = subprocess.run([sys.executable, "-c", train, *args], env={**os.environ, "KERAS_BACKEND": "jax"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "on-jax"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == "jax"
    out = tmp_path / "export"
    assert export_tiny(run / "model.keras", out) == 0
    report = {x["name"]: x for x in json.loads((out / "export_report.json").read_text())["results"]}
    assert report["keras_float32"]["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-3)
    assert report["tflite_float32"]["argmax_agreement"] > 0.99
