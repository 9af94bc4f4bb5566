"""tools.results_table: rows come from the run's artefacts; missing stages show as dashes; bad folders fail."""

from __future__ import annotations

import json

from tools import results_table


def _run(tmp_path, exported: bool, evaluated: bool):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "run": "r1", "arch": "dual-unet", "loss": "wce_dice", "mean_iou": 0.61234,
        "per_class_iou": {"soil": 0.8, "bedrock": 0.85, "sand": 0.6, "big_rock": 0.2},
        "parameters": 1_042_861, "macs_per_tile": 239_000_000, "epochs_run": 7, "best_epoch": 5,
        "wall_seconds": 1800.0,
    }))
    if exported:
        (run / "export").mkdir()
        (run / "export" / "export_report.json").write_text(json.dumps({"results": [
            {"name": "keras_float32", "mean_iou": 0.61234}, {"name": "tflite_int8", "mean_iou": 0.60111}]}))
    if evaluated:
        (run / "eval").mkdir()
        (run / "eval" / "eval.json").write_text(json.dumps({"results": [
            {"overlap": 0.0, "mean_iou": 0.60111}, {"overlap": 0.25, "mean_iou": 0.63}]}))
    return run


def test_full_row_quotes_every_stage(tmp_path):
    line = results_table.row(_run(tmp_path, exported=True, evaluated=True))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:6] == ["r1", "dual-unet, wce_dice", "0.6123", "0.6011", "0.6011", "0.6300"]
    assert cells[6] == "0.800 / 0.850 / 0.600 / 0.200"
    assert cells[7:] == ["1.04 M", "0.239", "7 ep (best 5), 30 min"]


def test_missing_stages_are_dashes(tmp_path):
    cells = [c.strip() for c in results_table.row(_run(tmp_path, False, False)).strip("|").split("|")]
    assert cells[3:6] == ["–", "–", "–"]


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert results_table.main([str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_an_adjusted_copy_is_named_by_its_folder_and_marked(tmp_path):
    run = _run(tmp_path, exported=False, evaluated=False)
    m = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**m, "logit_adjustment": {"bias": [0, 0.6, 1.6, 0, -0.4]}}))
    copy = run.rename(tmp_path / "r1a")  # marsseg-adjust --output keeps the training run's name inside
    cells = [c.strip() for c in results_table.row(copy).strip("|").split("|")]
    assert cells[:2] == ["r1a", "dual-unet, wce_dice + logit adj."]
