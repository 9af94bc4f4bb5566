import json

import numpy as np
import pytest
from marsseg.edge.evaluate import main

from tests.conftest import TINY_MODEL, synthetic_frames


def test_eval_reports_tile_and_frame_level(tmp_path, capsys):
    frames, masks = synthetic_frames(n=6)
    data = tmp_path / "clip.npz"
    np.savez(data, frames=frames, masks=masks, names=np.array([f"n{i}" for i in range(6)]))
    names = tmp_path / "split.json"
    names.write_text(json.dumps({"val_names": ["n1", "n2", "n5"]}))
    rc = main([str(data), "--model", str(TINY_MODEL), "--names", str(names), "--overlap", "0", "0.5",
               "--output", str(tmp_path / "ev"), "--min-confidence", "0", "0.5", "0.9"])
    assert rc == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["frames"] == 3 and [r["overlap"] for r in report["results"]] == [0.0, 0.5]
    for r in report["results"]:
        cm = np.array(r["confusion_matrix"])
        assert cm.sum() == 3 * 128 * 128
        assert 0 <= r["mean_iou"] <= 1
        mc = r["min_confidence"]
        assert sum(mc["cells"].values()) == 3 * (128 // 16) ** 2
        shares = [mc["flagged_share"][t] for t in ("0", "0.5", "0.9")]
        assert all(v == 0 for v in shares[0].values())  # threshold 0 flags nothing
        for kind in ("unlabelled", "right", "wrong"):  # a higher threshold flags a superset
            assert shares[1][kind] <= shares[2][kind] <= 1
    assert (tmp_path / "ev" / "confusion_overlap0.50.png").stat().st_size > 1000
    assert "overlap 0.00: mean IoU" in capsys.readouterr().out


def test_eval_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    np.savez(bad, images=np.zeros(3))
    assert main([str(bad), "--model", str(TINY_MODEL)]) == 2
    assert "expected arrays 'frames' and 'masks'" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "words"), [
    (["--min-confidence", "60"], "--min-confidence thresholds in [0, 1]"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--output", "{tmp}/clip.npz/out"], "cannot be created"),  # under a file: refused before the work, not after
])
def test_eval_refuses_bad_options_before_the_work(tmp_path, capsys, args, words):
    frames, masks = synthetic_frames(n=2)
    np.savez(tmp_path / "clip.npz", frames=frames, masks=masks)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main([str(tmp_path / "clip.npz"), "--model", str(TINY_MODEL), *args]) == 2
    captured = capsys.readouterr()
    assert words in captured.err and len(captured.err.strip().splitlines()) == 1 and "mean IoU" not in captured.out


def test_eval_corruption_suite(tmp_path, capsys):
    from marsseg.core.degrade import SUITE

    frames, masks = synthetic_frames(n=3)
    data = tmp_path / "clip.npz"
    np.savez(data, frames=frames, masks=masks)
    assert main([str(data), "--model", str(TINY_MODEL), "--overlap", "0.25", "0", "--corruptions",
                 "--output", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [r["overlap"] for r in report["results"]] == [0.25, 0.0]  # the unchanged frames stay alone in "results"
    study = report["corruptions"]
    assert study["overlap"] == 0.25 and study["clean"]["mean_iou"] == report["results"][0]["mean_iou"]
    rows = study["results"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [(c.name, s) for c in SUITE for s in (1, 2, 3)]
    assert study["corrupted_mean_iou"] == pytest.approx(np.mean([r["mean_iou"] for r in rows]))
    assert study["drop"] == pytest.approx(study["clean"]["mean_iou"] - study["corrupted_mean_iou"])
    assert study["worst_severity_2"]["mean_iou"] == min(r["mean_iou"] for r in rows if r["severity"] == 2)
    assert rows[0]["params"] == {"sigma": 0.5}
    assert (tmp_path / "ev" / "corruptions.png").stat().st_size > 5000
    out = capsys.readouterr().out
    assert "corrupted mean IoU" in out and "  jpeg " in out
    # seeded: the same command gives the same figures
    assert main([str(data), "--model", str(TINY_MODEL), "--overlap", "0.25", "--corruptions", "sensor-noise",
                 "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval.json").read_text())["corruptions"]["results"]
    assert again == [r for r in rows if r["corruption"] == "sensor-noise"]
    with pytest.raises(SystemExit) as e:  # an unknown corruption is a usage error naming the valid ones
        main([str(data), "--model", str(TINY_MODEL), "--corruptions", "sunny"])
    assert e.value.code == 2 and "'gaussian-blur'" in capsys.readouterr().err


def test_eval_held_out_group_runs_the_families_nobody_trained_for(tmp_path):
    from marsseg.core.degrade import HELD_OUT, SUITE

    frames, masks = synthetic_frames(n=2)
    data = tmp_path / "clip.npz"
    np.savez(data, frames=frames, masks=masks)
    assert main([str(data), "--model", str(TINY_MODEL), "--overlap", "0", "--corruptions", "held-out", "jpeg",
                 "--output", str(tmp_path / "ev")]) == 0
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())["corruptions"]["results"]
    assert [r["corruption"] for r in rows[::3]] == [*(c.name for c in HELD_OUT), "jpeg"]
    assert not {c.name for c in HELD_OUT} & {c.name for c in SUITE}


def test_exposure_lut():
    from marsseg.core.spec import exposure_lut

    assert np.array_equal(exposure_lut(1.0, 1.0, 0.0), np.arange(256, dtype=np.uint8))
    dark, bright = exposure_lut(np.array([1.25, 0.8]), np.array([0.8, 1.25]), 0.0)
    assert (np.diff(dark.astype(int)) >= 0).all() and (np.diff(bright.astype(int)) >= 0).all()
    assert (dark <= np.arange(256)).all() and (bright >= np.arange(256)).all()
    assert exposure_lut(1.0, 0.5, 0.6)[0] == 153 and exposure_lut(1.0, 1.0, 0.5)[255] == 255  # offset, clipping


def test_camera_sweep_measures_one_setting(tmp_path, capsys):
    from tools.camera_sweep import main as sweep

    frames, masks = synthetic_frames(n=3)
    data = tmp_path / "clip.npz"
    np.savez(data, frames=frames, masks=masks)
    out = tmp_path / "sweep.json"
    assert sweep([str(data), "jpeg", "quality", "90", "30", "--model", str(TINY_MODEL), "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["value"] for r in rows] == [None, 90.0, 30.0]
    assert all(np.array(r["confusion_matrix"]).sum() == 3 * 128 * 128 for r in rows)
    assert "jpeg quality=30: mean IoU" in capsys.readouterr().out
    assert sweep([str(data), "resample", "factor", "2", "--fixed", "down=area", "up=cubic",
                  "--model", str(TINY_MODEL)]) == 0
    with pytest.raises(SystemExit):
        sweep([str(data), "fog", "density", "1", "--model", str(TINY_MODEL)])
