"""tools.make_assets: the model card's lineage walks init_from, and its commands rebuild each leg's config."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest
from marsseg.train.cli import build_config, parse_args
from marsseg.train.config import TrainConfig

from tools import make_assets


def _leg(root, name: str, init_from: str = "", data=None, **overrides) -> TrainConfig:
    data = data if isinstance(data, dict) else dataclasses.asdict(data) if data else {}
    cfg = TrainConfig(data={**data, "path": "frames.npz"}, run_name=name, init_from=init_from, **overrides)
    run = root / name
    run.mkdir()
    cfg.save(run / "config.json")
    (run / "metrics.json").write_text(json.dumps({"epochs_run": 3, "best_epoch": 2, "mean_iou": 0.5}))
    return cfg


def test_lineage_is_oldest_first_and_commands_rebuild_each_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    first = _leg(runs, "a", time_budget_min=80.0)
    second = _leg(runs, "b", init_from="runs/a/model.keras", optim={"learning_rate": 2e-4, "rare_cap": 4.0,
                  "ema": 0.99, "distill": 1.0}, model={"fine_widths": (16, 32, 64)}, data={"degrade": 1.0},
                  phases=({"name": "only", "quant": {"fake_quant": True}},))
    recipe = TrainConfig.load(make_assets.DEFAULT_CONFIG)
    third = _leg(runs, "c", phases=recipe.phases, model=recipe.model, optim=recipe.optim, data=recipe.data,
                 adjust=recipe.adjust, train_seed=recipe.train_seed)
    chain = make_assets.lineage(runs / "b")
    assert [run.name for run, _, _ in chain] == ["a", "b"]
    for (_, cfg, _), want in zip(chain, (first, second), strict=True):
        argv = shlex.split(make_assets.train_command(cfg))[1:]
        got = build_config(parse_args(argv))
        assert dataclasses.replace(got, data=want.data, time_budget_min=want.time_budget_min) == want
    assert make_assets.train_command(third) == "marsseg-train --data ai4mars-frames-128.npz --run-name c"
    made = make_assets.recipe_section(make_assets.lineage(runs / "c"), None)
    assert "Made by the default recipe in one command" in made and "legs" not in made
    metrics = json.loads((runs / "c" / "metrics.json").read_text())
    (runs / "c" / "metrics.json").write_text(json.dumps({**metrics, "resumed": True}))
    assert "continued with `marsseg-train --resume runs/c`" in make_assets.recipe_section(
        make_assets.lineage(runs / "c"), None)
    assert "Not (yet) made by the default recipe" in make_assets.recipe_section(chain, None)
    longer = _leg(runs, "d", phases=recipe.phases, model=recipe.model, optim=recipe.optim, data=recipe.data,
                  adjust=recipe.adjust, train_seed=recipe.train_seed, epoch_scale=2.0)
    made = make_assets.recipe_section(make_assets.lineage(runs / "d"), None)
    assert "Made by the default recipe at 2× its length in one command" in made
    assert f"`{make_assets.train_command(longer)}`" in made and "epoch_scale=2" in made


def test_lineage_names_a_missing_parent_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    _leg(tmp_path / "runs", "b", init_from="runs/gone/model.keras")
    with pytest.raises(FileNotFoundError, match="runs/gone is not a finished run folder"):
        make_assets.lineage(tmp_path / "runs" / "b")


def _study(clean: float, drops: dict[str, tuple[float, float, float]]) -> dict:
    rows = [{"corruption": k, "severity": s + 1, "mean_iou": clean - d, "drop": d}
            for k, ds in drops.items() for s, d in enumerate(ds)]
    mean = sum(r["mean_iou"] for r in rows) / len(rows)
    worst = min((r for r in rows if r["severity"] == 2), key=lambda r: r["mean_iou"])
    return {"overlap": 0.25, "clean": {"mean_iou": clean}, "results": rows, "corrupted_mean_iou": mean,
            "drop": clean - mean,
            "worst_severity_2": {"corruption": worst["corruption"], "mean_iou": worst["mean_iou"]}}


def test_card_quotes_frame_level_and_corruption_figures_from_the_runs_eval(tmp_path):
    run = tmp_path / "run"
    assert "not evaluated" in make_assets.frame_level(run)
    assert make_assets.robustness_section(run, None) == ""
    (run / "eval").mkdir(parents=True)
    study = _study(0.7, {"jpeg": (0.01, 0.02, 0.05), "dark": (0.0, 0.01, 0.03)})
    report = {"frames": 7, "results": [{"overlap": 0.0, "mean_iou": 0.61234}, {"overlap": 0.25, "mean_iou": 0.65}],
              "corruptions": study}
    (run / "eval" / "eval.json").write_text(json.dumps(report))
    text = make_assets.frame_level(run)
    assert "7 validation frames): overlap 0 0.6123, overlap 0.25 0.6500." in text
    assert "corrupted mean IoU 0.6800 (clean 0.7000, drop 0.0200); worst at severity 2: jpeg 0.6800" in text
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"run_id": "v17q", "model_sha256": "ab" * 32,
                               "corruptions": _study(0.73, {"jpeg": (0.3, 0.4, 0.5), "dark": (0.02, 0.05, 0.09)})}))
    table = make_assets.robustness_section(run, old)
    assert "| degradation | before (v17q) s1 | s2 | s3 | this model (run) s1 | s2 | s3 |" in table
    assert "| jpeg | 0.4300 | 0.3300 | 0.2300 | 0.6900 | 0.6800 | 0.6500 |" in table
    assert "| clean | 0.7300 |  |  | 0.7000 |  |  |" in table and "| **corrupted mean** | 0.5033 |" in table
    assert "not trained for" not in table
    (run / "held-out").mkdir()
    (run / "held-out" / "eval.json").write_text(json.dumps(
        {"corruptions": _study(0.7, {"denoise": (0.1, 0.25, 0.3), "median": (0.02, 0.1, 0.2)})}))
    table = make_assets.robustness_section(run, old)
    held = table[table.index("not trained for"):]
    assert "drop from clean 0.1617" in held and "Worst at severity 2: denoise 0.4500" in held
    assert "| denoise | 0.6000 | 0.4500 | 0.4000 |" in held and "| jpeg" not in held


def test_a_leg_started_from_a_tool_made_model_ends_the_lineage_with_its_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "rebuilt").mkdir()
    (runs / "rebuilt" / "provenance.json").write_text(json.dumps(
        {"command": "python -m tools.float_from_int8 m.tflite --out runs/rebuilt/model.keras", "note": "rebuilt"}))
    _leg(runs, "ft", init_from="runs/rebuilt/model.keras")
    chain = make_assets.lineage(runs / "ft")
    assert [run.name for run, _, _ in chain] == ["ft"]
    lines = make_assets.reproduce(chain)
    assert lines[0].startswith("python -m tools.float_from_int8") and lines[1].startswith("marsseg-train")


def test_card_says_how_the_logit_adjustment_was_made(tmp_path):
    a = {"bias": [0.0, 0.6, 1.6, 0.0, -0.4], "train_tiles": 2400, "train_miou_before": 0.7066,
         "train_miou_after": 0.7529, "val_miou_before": 0.6781}
    run = tmp_path / "v8a"
    adjusted = {"mean_iou": 0.7021, "logit_adjustment": a}
    unadjusted = {"adjust": {"logit_adjust": False}}
    line, cmd = make_assets.adjustment(run, TrainConfig(run_name="v8a", **unadjusted), adjusted)
    assert "validation float mean IoU 0.6781 → 0.7021" in line and "[0.0, 0.6, 1.6, 0.0, -0.4]" in line
    assert cmd.strip() == "marsseg-adjust runs/v8a"  # adjusted in place after training
    _, cmd = make_assets.adjustment(run, TrainConfig(run_name="v8", **unadjusted), adjusted)
    assert cmd.strip() == "marsseg-adjust runs/v8 --output runs/v8a"  # adjusted into a copy
    assert make_assets.adjustment(run, TrainConfig(), {"mean_iou": 0.7, "logit_adjustment": a})[1] == ""
    assert make_assets.adjustment(run, TrainConfig(), {"mean_iou": 0.7}) == ("", "")


def test_card_reproduces_a_scale_chosen_again_after_training(tmp_path):
    a = {"bias": [0.0, 0.4, 0.6, 0.05, -0.3], "fitted_bias": [0.0, 0.8, 1.2, 0.1, -0.6], "scale": 0.5,
         "scales": [0.0, 0.5, 1.0], "train_tiles": 2400, "train_miou_before": 0.7441, "train_miou_after": 0.7639,
         "val_miou_before": 0.7084, "made_by": "marsseg-adjust"}
    line, cmd = make_assets.adjustment(tmp_path / "v11b", TrainConfig(run_name="v11"),
                                       {"mean_iou": 0.7136, "logit_adjustment": a})
    assert "0.5 × the fitted [0.0, 0.8, 1.2, 0.1, -0.6]" in line and "scales 0, 0.5, 1" in line
    assert cmd.strip() == "marsseg-adjust runs/v11 --output runs/v11b --scales 0 0.5 1"


def test_reproduce_puts_an_intermediate_legs_adjustment_between_its_training_and_the_next_leg(tmp_path, monkeypatch):
    # v12 trained, its offsets taken out into a copy v12u, and a quantization-aware leg v14q started from that copy
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    _leg(runs, "v12")
    (runs / "v12").rename(runs / "v12u")
    a = {"bias": [0.0] * 5, "fitted_bias": [0.0, 0.8, 1.0, 0.2, -0.8], "scale": 0.0, "scales": [0.0],
         "train_tiles": 2400, "train_miou_before": 0.74, "train_miou_after": 0.76, "val_miou_before": 0.71,
         "made_by": "marsseg-adjust"}
    (runs / "v12u" / "metrics.json").write_text(json.dumps({"epochs_run": 3, "best_epoch": 2, "mean_iou": 0.71,
                                                            "logit_adjustment": a}))
    _leg(runs, "v14q", init_from="runs/v12u/model.keras", quant={"fake_quant": True})
    chain = make_assets.lineage(runs / "v14q")
    monkeypatch.chdir(make_assets.ROOT)
    lines = make_assets.reproduce(chain)
    assert [line.split()[0] for line in lines] == ["marsseg-train", "marsseg-adjust", "marsseg-train"]
    assert "--run-name v12 " in lines[0] and lines[1] == "marsseg-adjust runs/v12 --output runs/v12u --scales 0"
    assert "--set quant.fake_quant=true" in lines[2] and "--set init_from=runs/v12u/model.keras" in lines[2]


def test_card_says_when_the_frames_met_the_exposure_floor(tmp_path):
    """A study run with the exposure floor is labelled so, beside a baseline run without it (reports made before it)."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    study = {**_study(0.71, {"dark": (0.01, 0.02, 0.05)}), "exposure_floor": 58.56}
    (run / "eval" / "eval.json").write_text(json.dumps(
        {"frames": 7, "results": [{"overlap": 0.25, "mean_iou": 0.71, "exposure_floor": 58.56}], "corruptions": study}))
    assert "7 validation frames; frames darker than 58.6 DN lifted to it" in make_assets.frame_level(run)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"run_id": "run", "corruptions": _study(0.70, {"dark": (0.02, 0.04, 0.08)})}))
    table = make_assets.robustness_section(run, old)
    assert "| degradation | before (run) s1 | s2 | s3 | this model (run, exposure floor 58.6 DN) s1 |" in table


def test_a_bundle_that_cannot_be_made_changes_nothing(tmp_path, monkeypatch, capsys):
    """Everything is made before anything is written: a missing frames file leaves the old bundle whole."""
    assets = tmp_path / "assets"
    monkeypatch.setattr(make_assets, "ASSETS", assets)
    run, exp = tmp_path / "run", tmp_path / "run" / "export"
    exp.mkdir(parents=True)
    (run / "split.json").write_text(json.dumps({"data": str(tmp_path / "gone.npz"), "val_names": ["a"]}))
    (exp / "export_report.json").write_text(json.dumps({"passed": True, "results": []}))
    (exp / "model_int8.tflite").write_bytes(b"new model")
    (exp / "model_int8.json").write_text("{}")
    assert make_assets.main(["--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert "gone.npz" in err and "nothing in" in err and len(err.strip().splitlines()) == 1
    assert not assets.exists()
    (exp / "export_report.json").write_text(json.dumps({"passed": False, "results": []}))
    assert make_assets.main(["--run", str(run)]) == 1
    assert "failed its gate" in capsys.readouterr().err and not assets.exists()
