"""Smoke test: one epoch on a few dozen tiles through the real training CLI."""

import json

import numpy as np
import pytest

pytest.importorskip("keras")

from marsseg.train.cli import main

TINY = ["--set", "fine_widths=[4,8,8]", "--set", "bottleneck=8", "--set", "coarse_widths=[8,8]",
        "--set", "coarse_bottleneck=8"]


@pytest.mark.slow
def test_train_cli_writes_run_folder(frames_file, tmp_path):
    rc = main(["--data", str(frames_file), "--epochs", "1", "--batch-size", "8", "--out-dir", str(tmp_path),
               "--run-name", "smoke", *TINY])
    assert rc == 0
    run = tmp_path / "smoke"
    for name in ("model.keras", "config.json", "history.csv", "metrics.json", "split.json",
                 "curves.png", "confusion.png", "predictions.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0
    assert set(metrics["per_class_iou"]) == {"soil", "bedrock", "sand", "big_rock"}
    assert np.array(metrics["confusion_matrix"]).shape == (5, 5)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fine_widths"] == [4, 8, 8] and cfg["epochs"] == 1
    split = json.loads((run / "split.json").read_text())
    assert split["train_frames"] + split["val_frames"] == 24 and split["seed"] == 42

    # continue from that model (how a CPU run is extended in a later session)
    rc = main(["--data", str(frames_file), "--epochs", "1", "--batch-size", "8", "--out-dir", str(tmp_path),
               "--run-name", "continued", "--set", f"init_from={run / 'model.keras'}", *TINY])
    assert rc == 0
    assert json.loads((tmp_path / "continued" / "config.json").read_text())["init_from"].endswith("model.keras")


def test_train_cli_bad_data_exits_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.npz")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_train_cli_unknown_key(frames_file, capsys):
    assert main(["--data", str(frames_file), "--set", "nonsense=1"]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_time_budget_stops_before_an_epoch_that_would_not_fit(monkeypatch):
    from types import SimpleNamespace

    from marsseg.train import fit

    clock = [1000.0]
    monkeypatch.setattr(fit.time, "monotonic", lambda: clock[0])
    cb = fit.TimeBudget(minutes=10)  # deadline at 1600 s
    model = SimpleNamespace(stop_training=False)
    cb.set_model(model)
    stops = []
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        clock[0] += 250  # each epoch takes 250 s: ends at 1250, 1500; a third would end at 1750 > 1600
        cb.on_epoch_end(epoch)
        stops.append(model.stop_training)
        if model.stop_training:
            break
    assert stops == [False, True]
