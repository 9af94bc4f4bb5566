"""The training CLI end to end on a few dozen tiles: run folder, phases, adjustment, exact resume; and the config."""

import json
import logging
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marsseg.train.cli import main  # noqa: E402
from marsseg.train.prior import main as adjust_main  # noqa: E402

from tests.conftest import synthetic_frames  # noqa: E402
from tools.make_test_model import TINY, single_phase  # noqa: E402


@pytest.mark.slow
def test_train_cli_writes_run_folder(frames_file, tmp_path):
    rc = main(["--data", str(frames_file), *single_phase(1), "--batch-size", "8", "--out-dir", str(tmp_path),
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
    assert cfg["model"]["fine_widths"] == [4, 8, 8] and cfg["optim"]["epochs"] == 1
    split = json.loads((run / "split.json").read_text())
    assert split["train_frames"] + split["val_frames"] == 24 and split["seed"] == 42

    # continue from that model (how a CPU run is extended in a later session), as a quantization-aware leg
    # through random cameras with batch norm frozen
    rc = main(["--data", str(frames_file), *single_phase(1), "--batch-size", "8", "--out-dir", str(tmp_path),
               "--run-name", "continued", "--set", f"init_from={run / 'model.keras'}",
               "--set", "adjust.logit_adjust=false", "--set", "quant.fake_quant=true", "--set", "optim.freeze_bn=true",
               "--set", "data.degrade=0.5", *TINY])
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
    assert "unknown config key 'nonsense'" in capsys.readouterr().err
    assert main(["--data", str(frames_file), "--set", "learning_rate=1e-4"]) == 2  # a key of the old flat config
    assert "(it belongs in optim: optim.learning_rate)" in capsys.readouterr().err
    assert main(["--data", str(frames_file), "--set", "optim.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lr'" in err and "learning_rate" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("item", "words"), [
    ("optim.learning_rate=abc", "config key 'optim.learning_rate' must be float, got 'abc'"),
    ("optim.epochs=12.5", "config key 'optim.epochs' must be int, got 12.5"),
    ('model.fine_widths=[16,"a"]', "config key 'model.fine_widths' must be tuple[int, ...]"),
    ("optim.freeze_bn=1", "config key 'optim.freeze_bn' must be bool, got 1"),
    ("optim.batch_size=0", "optim.batch_size must be >= 1, got 0"),
    ("data.val_fraction=1", "data.val_fraction must be in (0, 1), got 1"),
    ("model.fine_widths=[]", "model.fine_widths must be a non-empty list of widths >= 1, got ()"),
    ("time_budget_min=-5", "time_budget_min must be >= 0"),
    ('model.arch="unet"', "model: unknown arch 'unet'"),  # found by building it, still before the run folder
])
def test_a_value_of_the_wrong_type_or_range_is_one_line_naming_the_key(frames_file, tmp_path, item, words, capsys):
    """Before the check, a learning rate of 'abc' wrote a run folder and went on into the first epoch."""
    assert main(["--data", str(frames_file), "--out-dir", str(tmp_path / "runs"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before the run folder


@pytest.mark.parametrize(("text", "words"), [
    (None, "config file not found: "),
    ("{bad", "not a readable JSON config (Expecting property name"),
    ("[1, 2]", "a config is a JSON object of keys and sections like train/configs/default.json, got a list"),
])
def test_a_config_file_that_is_missing_or_not_an_object_is_one_line(frames_file, tmp_path, text, words, capsys):
    """A list used to reach `set_key` and end in a traceback."""
    config = tmp_path / "config.json"
    if text is not None:
        config.write_text(text)
    assert main(["--data", str(frames_file), "--config", str(config), "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_json_numbers_and_lists_become_the_fields_types():
    from marsseg.train.config import TrainConfig

    cfg = TrainConfig.from_dict({"optim": {"epochs": 12.0}, "model": {"fine_widths": [16, 32, 64]}})
    assert cfg.optim.epochs == 12 and type(cfg.optim.epochs) is int and cfg.model.fine_widths == (16, 32, 64)


def test_train_cli_unknown_schedule(frames_file, capsys):
    assert main(["--data", str(frames_file), "--set", 'optim.schedule="cosine-annealing"']) == 2
    assert "optim.schedule must be one of" in capsys.readouterr().err


def phase_of(**optim):
    from marsseg.train.config import TrainConfig

    return TrainConfig(optim=optim).phase_configs()[0]


def test_cosine_schedule_anneals_once_from_learning_rate_to_min_lr():
    from marsseg.train.fit import learning_rate_schedule

    lr = learning_rate_schedule(phase_of(schedule="cosine", learning_rate=2e-4, min_lr=1e-5, epochs=4), 10)
    at = [float(lr(step)) for step in (0, 20, 40, 60)]
    assert at[0] == pytest.approx(2e-4)
    assert at[1] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)  # half way down the cosine
    assert at[2] == pytest.approx(1e-5) and at[3] == pytest.approx(1e-5)  # stays at the floor, no restart
    assert learning_rate_schedule(phase_of(learning_rate=3e-4), 10) == 3e-4  # plateau: a constant


def test_cosine_warmup_ramps_up_from_min_lr_then_anneals_within_the_same_epochs():
    from marsseg.train.fit import learning_rate_schedule

    phase = phase_of(schedule="cosine", learning_rate=2e-4, min_lr=1e-5, epochs=5, warmup_epochs=1)
    lr = learning_rate_schedule(phase, steps_per_epoch=10)
    at = [float(lr(step)) for step in (0, 5, 10, 30, 50)]
    assert at[0] == pytest.approx(1e-5) and at[1] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)
    assert at[2] == pytest.approx(2e-4)  # peak after one epoch
    assert at[3] == pytest.approx((1e-5 + 2e-4) / 2, rel=1e-4)  # half way down the remaining 4 epochs
    assert at[4] == pytest.approx(1e-5)  # the floor at the end of `epochs`, as without warm-up


@pytest.mark.parametrize("bad", [{"schedule": "plateau"}, {"warmup_epochs": 5}, {"warmup_epochs": -1}])
def test_warmup_outside_a_cosine_phase_is_refused(bad):
    with pytest.raises(ValueError, match="warmup_epochs"):
        phase_of(**{"schedule": "cosine", "epochs": 5, "warmup_epochs": 1, **bad})


def test_the_recipe_is_phases_each_changing_what_it_names_and_scaled_together():
    from marsseg.train.cli import DEFAULT_CONFIG, build_config, parse_args
    from marsseg.train.config import TrainConfig

    recipe = build_config(parse_args([]))  # no --config: the bundled model's recipe
    assert recipe == TrainConfig.load(DEFAULT_CONFIG) and len(recipe.phases) >= 2
    phases = recipe.phase_configs()
    assert phases[-1].quant.fake_quant and phases[-1].optim.freeze_bn and phases[-1].data.degrade > 0
    assert all(p.data.photometric == recipe.data.photometric for p in phases)  # base settings carry through
    short = build_config(parse_args(["--epoch-scale", "0.1"])).phase_configs()
    for full, cut in zip(phases, short, strict=True):
        assert cut.optim.epochs == max(1, round(full.optim.epochs * 0.1))
        assert cut.optim.warmup_epochs / cut.optim.epochs == pytest.approx(full.optim.warmup_epochs / full.optim.epochs)
    two = TrainConfig(phases=({"name": "a", "optim": {"learning_rate": 1e-3}},
                              {"name": "b", "data": {"degrade": 1.0}, "optim": {"epochs": 3}})).phase_configs()
    assert (two[1].optim.learning_rate, two[1].optim.epochs, two[0].data.degrade) == (1e-3, 3, 0.0)  # cumulative
    with pytest.raises(ValueError, match=r"phase 'x' may change data .* not \['model'\]"):
        TrainConfig(phases=({"name": "x", "model": {"dropout": 0.1}},))
    with pytest.raises(ValueError, match=r"not \['data.seed'\]"):  # the split is the run's, not a phase's
        TrainConfig(phases=({"name": "x", "data": {"seed": 3}},))
    with pytest.raises(ValueError, match="epoch_scale"):
        TrainConfig(epoch_scale=0)


def test_time_budget_pauses_before_an_epoch_that_would_not_fit(monkeypatch):
    from types import SimpleNamespace

    from marsseg.train import callbacks

    clock = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    cb = callbacks.TimeBudget(minutes=10)  # deadline at 1600 s
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
    assert stops == [False, True] and cb.fired


def test_ema_swap_validates_the_average_and_trains_on_the_raw_weights():
    from marsseg.train.callbacks import EmaSwap

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

    swap = EmaSwap()
    x, y = np.random.default_rng(0).normal(size=(64, 3)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[swap, Probe("during"), swap.restorer(), Probe("after")])
    for during, average, raw, after in zip(seen["during"], seen["average"], swap.raw, seen["after"], strict=True):
        np.testing.assert_allclose(during, average)  # validation/checkpoint see the average
        np.testing.assert_allclose(after, raw)  # training continues from the raw weights
        assert not np.allclose(average, raw)  # 8 steps at lr 0.1: the two really differ


def test_train_seed_varies_the_augmentation_stream_and_leaves_the_split_alone(frames_file):
    from marsseg.train import data as D
    from marsseg.train.config import TrainConfig
    from marsseg.train.fit import TrainTiles

    def first_batch(**kw) -> np.ndarray:
        cfg = TrainConfig(data={"path": str(frames_file), "photometric": 0.2}, optim={"batch_size": 8}, **kw)
        d = cfg.data
        return TrainTiles(D.prepare(d).train, cfg.phase_configs()[0],
                          (cfg.training_seed, 0))[0][0]

    assert TrainConfig(data={"seed": 7}).training_seed == 7
    assert TrainConfig(data={"seed": 7}, train_seed=3).training_seed == 3
    np.testing.assert_array_equal(first_batch(), first_batch(train_seed=42))  # unset: the split seed
    assert not np.array_equal(first_batch(), first_batch(train_seed=43))  # a continued run can draw new crops
    split = [D.prepare(TrainConfig(data={"path": str(frames_file)}, train_seed=s).data).val.names.tolist()
             for s in (1, 2)]
    assert split[0] == split[1]


TWO_PHASES = json.dumps([
    {"name": "clean", "optim": {"epochs": 1}},
    {"name": "camera", "data": {"degrade": 0.5, "camera_labels": 0.5}, "quant": {"fake_quant": True},
     "optim": {"epochs": 2, "distill": 1.0, "freeze_bn": True, "learning_rate": 0.01}},
])


@pytest.fixture(scope="module")
def two_phase_run(tmp_path_factory):
    """The reference: a two-phase run (clean, then camera-distilled fake-quantized with batch norm frozen),
    uninterrupted; the resume cases below end where it ends."""
    out = tmp_path_factory.mktemp("phases")
    frames, masks = synthetic_frames()
    data = out / "frames.npz"
    np.savez_compressed(data, frames=frames, masks=masks, names=np.array([f"f{i:03d}" for i in range(len(frames))]))
    args = ["--data", str(data), "--batch-size", "8", "--out-dir", str(out), *TINY,
            "--set", f"phases={TWO_PHASES}", "--set", "optim.ema=0.9", "--set", "data.photometric=0.2",
            "--set", "optim.schedule=\"cosine\"", "--set", "optim.learning_rate=0.01", "--set", "adjust.scales=[0,1]"]
    assert main([*args, "--run-name", "whole"]) == 0
    return args, out / "whole"


def assert_resumed_like(whole, run) -> None:
    """The last epoch's full state (optimizer moments, weight average, fake-quant ranges, dropout seeds: teacher,
    camera/crop stream, phase and LR position all carried over), the history and the scores of the whole run."""
    from marsseg.train import checkpoint

    final, resumed = checkpoint.load(whole / "checkpoint.npz"), checkpoint.load(run / "checkpoint.npz")
    assert resumed[2]["phase"] == 1 and resumed[2]["epochs_done"] == 2
    for a, b in zip(final[0] + final[1], resumed[0] + resumed[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert len((run / "history.csv").read_text().splitlines()) == 4  # header + 3 epochs, appended
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (whole, run))
    assert r["resumed"] and r["epochs_run"] == 3 and abs(m["mean_iou"] - r["mean_iou"]) < 1e-4


@pytest.mark.slow
def test_a_run_goes_through_its_phases(two_phase_run):
    _, whole = two_phase_run
    m = json.loads((whole / "metrics.json").read_text())
    assert [p["name"] for p in m["phases"]] == ["clean", "camera"] and m["epochs_run"] == 3
    assert [p["epochs_run"] for p in m["phases"]] == [1, 2] and 0 <= m["val_miou_fake_quant"] <= 1
    for k, name in enumerate(("clean", "camera")):
        assert (whole / f"phase{k + 1}-{name}.keras").is_file()
    rows = (whole / "history.csv").read_text().splitlines()
    phase_col = rows[0].split(",").index("phase")
    assert [int(float(r.split(",")[phase_col])) for r in rows[1:]] == [0, 1, 1]
    start = keras.saving.load_model(whole / "phase1-clean.keras", compile=False)
    end = keras.saving.load_model(whole / "phase2-camera.keras", compile=False)
    for a, b in zip(start.layers, end.layers, strict=True):  # the camera phase started from the clean one, its
        if isinstance(a, keras.layers.BatchNormalization):  # batch norm frozen there
            for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
                np.testing.assert_array_equal(wa, wb)


@pytest.mark.slow
def test_paused_at_the_phase_boundary_resumes_exactly(two_phase_run, monkeypatch, capsys):
    from marsseg.train import callbacks

    args, whole = two_phase_run
    real_budget = callbacks.TimeBudget.on_epoch_end

    def out_of_time_after_clean(self, epoch, logs=None):
        real_budget(self, epoch, logs)
        self.model.stop_training = self.fired = True

    monkeypatch.setattr(callbacks.TimeBudget, "on_epoch_end", out_of_time_after_clean)
    assert main([*args, "--run-name", "paused", "--time-budget-min", "600"]) == 3
    assert "time budget of 600 min reached in phase 'clean'" in capsys.readouterr().err
    paused = whole.parent / "paused"
    assert (paused / "phase1-clean.keras").is_file()  # its last epoch ended the phase
    assert not (paused / "metrics.json").exists()
    assert main([*args, "--run-name", "paused"]) == 2  # not started anew over it: the error says how to go on
    assert f"continue it with `marsseg-train --resume {paused}`" in capsys.readouterr().err
    monkeypatch.setattr(callbacks.TimeBudget, "on_epoch_end", real_budget)
    assert main(["--resume", str(paused), "--time-budget-min", "-1"]) == 2  # a leg's flags are checked too
    assert "time_budget_min must be >= 0" in capsys.readouterr().err
    assert main(["--resume", str(paused)]) == 0
    assert_resumed_like(whole, paused)


@pytest.mark.slow
def test_sigterm_inside_a_phase_resumes_exactly_and_a_damaged_checkpoint_is_refused(two_phase_run, monkeypatch,
                                                                                     capsys):
    from marsseg.train import callbacks

    args, whole = two_phase_run
    real = callbacks.ResumeCheckpoint.on_epoch_end

    def stop_inside_camera(self, epoch, logs=None):  # SIGTERM lands during the camera phase's second epoch
        real(self, epoch, logs)
        if self.phase == 1 and epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.ResumeCheckpoint, "on_epoch_end", stop_inside_camera)
    cut = whole.parent / "cut"
    assert main([*args, "--run-name", "cut"]) == 130
    assert f"--resume {cut}" in capsys.readouterr().err
    assert not (cut / "metrics.json").exists()  # finished runs only
    shutil.copytree(cut, whole.parent / "cut-copy")  # the same interrupted run, for the damage case below
    monkeypatch.setattr(callbacks.ResumeCheckpoint, "on_epoch_end", real)
    assert main(["--resume", str(cut)]) == 0
    assert_resumed_like(whole, cut)

    assert main(["--resume", str(cut)]) == 2  # finished: nothing to resume
    assert "has finished" in capsys.readouterr().err
    kept = {p.name: p.read_bytes() for p in cut.iterdir() if p.is_file()}
    assert main([*args, "--run-name", "cut"]) == 2  # a new run under a taken name would overwrite this one
    assert f"{cut} already holds a finished run: give another --run-name" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in cut.iterdir() if p.is_file()} == kept
    ckpt = whole.parent / "cut-copy" / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a power cut mid-copy, say
    assert main(["--resume", str(whole.parent / "cut-copy")]) == 2
    assert "checkpoint.npz is damaged" in capsys.readouterr().err


@pytest.mark.slow
def test_a_phase_distills_from_its_own_teacher(two_phase_run, caplog):
    """optim.teacher: a model other than the start (here none: from scratch) gives the distillation targets."""
    args, whole = two_phase_run
    teacher = whole / "phase1-clean.keras"
    one = json.dumps([{"name": "camera", "data": {"degrade": 0.5}, "optim": {"epochs": 1, "distill": 1.0,
                                                                             "teacher": str(teacher)}}])
    with caplog.at_level(logging.INFO, logger="marsseg.train.fit"):
        assert main([*args, "--set", f"phases={one}", "--run-name", "taught"]) == 0
    assert f"distilling from {teacher} (weight 1)" in caplog.text
    cfg = json.loads((whole.parent / "taught" / "config.json").read_text())
    assert cfg["phases"][0]["optim"]["teacher"] == str(teacher) and not cfg["init_from"]


def test_a_start_model_that_does_not_fit_is_refused_before_the_run_folder(frames_file, tmp_path, capsys):
    """A missing or too-wide init_from, or a missing teacher: one line naming it, exit 2, no run folder left behind."""
    from marsseg.train.config import ModelConfig
    from marsseg.train.model import build_model

    wider = tmp_path / "wider.keras"
    build_model(ModelConfig(fine_widths=(6, 8, 8), bottleneck=8, coarse_widths=(8, 8), coarse_bottleneck=8,
                            se_ratio=1)).save(wider)
    for start, says in ((tmp_path / "gone.keras", "no such model"), (wider, "at least the start model's")):
        rc = main(["--data", str(frames_file), *single_phase(1), "--out-dir", str(tmp_path / "runs"),
                   "--run-name", "bad-start", "--set", f"init_from={start}", *TINY])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"init_from {start}" in err[0] and says in err[0], err
        assert not (tmp_path / "runs" / "bad-start").exists()
    rc = main(["--data", str(frames_file), *single_phase(1), "--out-dir", str(tmp_path / "runs"), "--run-name",
               "bad-start", "--set", "optim.distill=1", "--set", f"optim.teacher={tmp_path / 'gone.keras'}", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"optim.teacher {tmp_path / 'gone.keras'}: no such model" in err[0], err
    assert not (tmp_path / "runs" / "bad-start").exists()
