"""Smoke test: one epoch on a few dozen tiles through the real training CLI."""

import json
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marsseg.train.cli import main  # noqa: E402
from marsseg.train.prior import main as adjust_main  # noqa: E402

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
    assert len(metrics["logit_adjustment"]["bias"]) == 5  # on by default
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fine_widths"] == [4, 8, 8] and cfg["epochs"] == 1
    split = json.loads((run / "split.json").read_text())
    assert split["train_frames"] + split["val_frames"] == 24 and split["seed"] == 42

    # continue from that model (how a CPU run is extended in a later session), as a quantization-aware leg
    # through random cameras with batch norm frozen
    rc = main(["--data", str(frames_file), "--epochs", "1", "--batch-size", "8", "--out-dir", str(tmp_path),
               "--run-name", "continued", "--set", f"init_from={run / 'model.keras'}", "--set", "logit_adjust=false",
               "--set", "fake_quant=true", "--set", "freeze_bn=true", "--set", "degrade=0.5", *TINY])
    assert rc == 0
    continued = tmp_path / "continued"
    assert json.loads((continued / "config.json").read_text())["init_from"].endswith("model.keras")
    unadjusted = json.loads((continued / "metrics.json").read_text())
    assert "logit_adjustment" not in unadjusted
    assert 0.0 <= unadjusted["val_miou_fake_quant"] <= 1.0  # epochs were scored fake-quantized ...
    assert 0.0 <= unadjusted["val_miou_camera"] <= 1.0  # ... and on validation frames through random cameras
    saved = keras.saving.load_model(continued / "model.keras", compile=False)  # ... the plain model was saved
    start = keras.saving.load_model(run / "model.keras")
    assert [type(layer) for layer in saved.layers] == [type(layer) for layer in start.layers]
    for a, b in zip(saved.layers, start.layers, strict=True):
        if isinstance(a, keras.layers.BatchNormalization):  # frozen: statistics, scale and offset as they were
            for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
                np.testing.assert_array_equal(wa, wb)

    # adjust that finished run afterwards (the split is rebuilt from its config): first into a copy, which leaves
    # the original as it was and its export/ behind, then in place; a second adjustment is refused
    (continued / "export").mkdir()
    assert adjust_main([str(continued), "--data", str(tmp_path / "gone.npz"), "--output", str(tmp_path / "copy")]) == 2
    assert not (tmp_path / "copy").exists()  # a failed adjustment leaves no half-made copy
    assert adjust_main([str(continued), "--sample", "8", "--output", str(tmp_path / "copy")]) == 0
    assert "logit_adjustment" in json.loads((tmp_path / "copy" / "metrics.json").read_text())
    assert not (tmp_path / "copy" / "export").exists()
    assert json.loads((continued / "metrics.json").read_text()) == unadjusted
    assert adjust_main([str(continued), "--sample", "8"]) == 0
    adjusted = json.loads((continued / "metrics.json").read_text())
    assert adjusted["logit_adjustment"]["val_miou_before"] == round(unadjusted["mean_iou"], 4)
    assert adjusted["epochs_run"] == unadjusted["epochs_run"]  # the training record is kept
    # adjusting again starts from the model as trained: the earlier offsets come out first, so the same
    # choice is made again and the figures before the adjustment are the trained model's
    model_once = keras.saving.load_model(continued / "model.keras", compile=False).get_weights()
    assert adjust_main([str(continued), "--sample", "8"]) == 0
    again = json.loads((continued / "metrics.json").read_text())
    assert again["logit_adjustment"]["bias"] == adjusted["logit_adjustment"]["bias"]
    assert again["logit_adjustment"]["val_miou_before"] == round(unadjusted["mean_iou"], 4)
    for w1, w2 in zip(model_once, keras.saving.load_model(continued / "model.keras", compile=False).get_weights(),
                      strict=True):
        np.testing.assert_allclose(w1, w2, atol=1e-6)
    assert adjust_main([str(continued), "--sample", "8", "--scales", "0", "1"]) == 0
    chosen = json.loads((continued / "metrics.json").read_text())["logit_adjustment"]
    assert chosen["scale"] in (0, 1) and set(chosen["val_miou_by_scale"]) == {"0", "1"}


def test_train_cli_bad_data_exits_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.npz")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_train_cli_unknown_key(frames_file, capsys):
    assert main(["--data", str(frames_file), "--set", "nonsense=1"]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_train_cli_unknown_schedule(frames_file, capsys):
    assert main(["--data", str(frames_file), "--set", 'schedule="cosine-annealing"']) == 2
    assert "schedule must be one of" in capsys.readouterr().err


def test_cosine_schedule_anneals_once_from_learning_rate_to_min_lr():
    from marsseg.train.config import TrainConfig
    from marsseg.train.fit import learning_rate_schedule

    cfg = TrainConfig(schedule="cosine", learning_rate=2e-4, min_lr=1e-5, epochs=4)
    lr = learning_rate_schedule(cfg, steps_per_epoch=10)
    at = [float(lr(step)) for step in (0, 20, 40, 60)]
    assert at[0] == pytest.approx(2e-4)
    assert at[1] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)  # half way down the cosine
    assert at[2] == pytest.approx(1e-5) and at[3] == pytest.approx(1e-5)  # stays at the floor, no restart
    assert learning_rate_schedule(TrainConfig(learning_rate=3e-4), 10) == 3e-4  # plateau: a constant


def test_cosine_warmup_ramps_up_from_min_lr_then_anneals_within_the_same_epochs():
    from marsseg.train.config import TrainConfig
    from marsseg.train.fit import learning_rate_schedule

    cfg = TrainConfig(schedule="cosine", learning_rate=2e-4, min_lr=1e-5, epochs=5, warmup_epochs=1)
    lr = learning_rate_schedule(cfg, steps_per_epoch=10)
    at = [float(lr(step)) for step in (0, 5, 10, 30, 50)]
    assert at[0] == pytest.approx(1e-5) and at[1] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)
    assert at[2] == pytest.approx(2e-4)  # peak after one epoch
    assert at[3] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)  # half way down the remaining 4 epochs
    assert at[4] == pytest.approx(1e-5)  # the floor at the end of `epochs`, as without warm-up


@pytest.mark.parametrize("bad", [{"schedule": "plateau"}, {"warmup_epochs": 5}, {"warmup_epochs": -1}])
def test_warmup_outside_a_cosine_leg_is_refused(bad):
    from marsseg.train.config import TrainConfig

    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(**{"schedule": "cosine", "epochs": 5, "warmup_epochs": 1, **bad})


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


def test_ema_swap_validates_the_average_and_trains_on_the_raw_weights():
    import keras
    from marsseg.train import fit

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.9), loss="mse")
    seen = {}

    class Probe(keras.callbacks.Callback):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def on_epoch_end(self, epoch, logs=None):
            seen[self.key] = [keras.ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables]
            if self.key == "during":
                seen["average"] = [keras.ops.convert_to_numpy(v).copy()
                                   for v in self.model.optimizer._model_variables_moving_average]

    swap = fit.EmaSwap()
    x, y = np.random.default_rng(0).normal(size=(64, 3)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[swap, Probe("during"), swap.restorer(), Probe("after")])
    for during, average, raw, after in zip(seen["during"], seen["average"], swap.raw, seen["after"], strict=True):
        np.testing.assert_allclose(during, average)  # validation/checkpoint see the average
        np.testing.assert_allclose(after, raw)  # training continues from the raw weights
        assert not np.allclose(average, raw)  # 8 steps at lr 0.1: the two really differ


def test_train_seed_varies_the_augmentation_stream_and_leaves_the_split_alone(frames_file):
    from marsseg.train.config import TrainConfig
    from marsseg.train.fit import TrainTiles, prepare_data

    def first_batch(**kw) -> np.ndarray:
        cfg = TrainConfig(data=str(frames_file), photometric=0.2, batch_size=8, **kw)
        return TrainTiles(prepare_data(cfg)["train"], cfg)[0][0]

    assert TrainConfig(seed=7).training_seed == 7 and TrainConfig(seed=7, train_seed=3).training_seed == 3
    np.testing.assert_array_equal(first_batch(), first_batch(train_seed=42))  # unset: the split seed, as before
    assert not np.array_equal(first_batch(), first_batch(train_seed=43))  # a continued leg can draw new crops
    split = [prepare_data(TrainConfig(data=str(frames_file), train_seed=s))["val"].names.tolist() for s in (1, 2)]
    assert split[0] == split[1]


@pytest.mark.slow
def test_resume_continues_exactly_where_the_run_stopped(frames_file, tmp_path, monkeypatch, capsys):
    """A run stopped after epoch 1 and resumed ends with the weights of the same run uninterrupted: optimizer
    moments, weight average, fake-quant ranges, dropout seeds, camera/crop stream and LR position all carry over."""
    from marsseg.train import fit

    args = ["--data", str(frames_file), "--epochs", "2", "--batch-size", "8", "--out-dir", str(tmp_path), *TINY,
            "--set", "ema=0.9", "--set", "photometric=0.2", "--set", "degrade=0.5", "--set", "fake_quant=true",
            "--set", "schedule=\"cosine\"", "--set", "learning_rate=0.01", "--set", "logit_adjust=false"]
    assert main([*args, "--run-name", "whole"]) == 0

    real = fit.ResumeCheckpoint.on_epoch_end

    def stop_after_first(self, epoch, logs=None):  # SIGTERM lands during epoch 2: epoch 1's checkpoint is kept
        real(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit.ResumeCheckpoint, "on_epoch_end", stop_after_first)
    assert main([*args, "--run-name", "cut"]) == 130
    assert f"--resume {tmp_path / 'cut'}" in capsys.readouterr().err
    assert not (tmp_path / "cut" / "metrics.json").exists()  # finished runs only
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-copy")  # the same interrupted run, for the damage case below
    monkeypatch.setattr(fit.ResumeCheckpoint, "on_epoch_end", real)
    assert main(["--resume", str(tmp_path / "cut")]) == 0

    from marsseg.train import checkpoint

    whole, resumed = (checkpoint.load(tmp_path / r / "checkpoint.npz") for r in ("whole", "cut"))
    assert whole[2]["epochs_done"] == resumed[2]["epochs_done"] == 2
    for a, b in zip(whole[0] + whole[1], resumed[0] + resumed[1], strict=True):  # the last epoch's full state
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    history = [(tmp_path / r / "history.csv").read_text().splitlines() for r in ("whole", "cut")]
    assert len(history[0]) == len(history[1]) == 3  # header + two epochs, the resumed run's appended
    m = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("whole", "cut")]
    assert m[1]["resumed"] and m[1]["epochs_run"] == 2 and abs(m[0]["mean_iou"] - m[1]["mean_iou"]) < 1e-4

    assert main(["--resume", str(tmp_path / "cut")]) == 2  # finished: nothing to resume
    assert "has finished" in capsys.readouterr().err
    ckpt = tmp_path / "cut-copy" / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a power cut mid-copy, say
    assert main(["--resume", str(tmp_path / "cut-copy")]) == 2
    assert "checkpoint.npz is damaged" in capsys.readouterr().err
