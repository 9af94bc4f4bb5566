"""Bundle a trained + exported model as the package default (edge/assets/), with its model card and demo clip.

  python -m tools.make_assets --run runs/default-v1

Copies `<run>/export/model_int8.{tflite,json}` and the float `model.keras` exported beside them, writes
`val_names.json` (the run's validation frames), `demo_clip.npz` (real validation frames with their masks, spread
over the split, big rock included) and `MODEL_CARD.md` (data, split, config, commands, metrics, robustness, date).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from marsseg.edge.io import write_atomic, write_text_atomic
from marsseg.train import data as D

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "edge" / "assets"
DEFAULT_CONFIG = ROOT / "train" / "configs" / "default.json"
# what a run was trained with when its config predates an option (the key is missing from its config.json)
LEGACY = {"logit_adjust": False, "logit_adjust_scales": [1.0]}
PROVENANCE = "provenance.json"  # beside a start model made by a tool (tools.float_from_int8), not by training


def demo_clip(ds: D.Dataset, val_names: list[str], n: int) -> D.Dataset:
    """`n` validation frames spread evenly over the (name-sorted) split, a quarter of them with big rock."""
    wanted = set(val_names)
    idx = np.array(sorted((i for i, name in enumerate(ds.names) if name in wanted), key=lambda i: ds.names[i]))
    rare = idx[(ds.masks[idx] == 4).any(axis=(1, 2))]
    k_rare = n // 4
    pick_rare = rare[np.linspace(0, len(rare) - 1, k_rare).round().astype(int)] if len(rare) else rare[:0]
    rest = np.setdiff1d(idx, pick_rare)
    pick = np.concatenate([pick_rare, rest[np.linspace(0, len(rest) - 1, n - len(pick_rare)).round().astype(int)]])
    pick = np.array(sorted(set(pick.tolist()), key=lambda i: ds.names[i]))
    return ds.subset(pick)


def lineage(run: Path) -> list[tuple[Path, dict, dict]]:
    """(run folder, config, metrics) for `run` and every run it continued from (`init_from`), oldest first.

    The chain also ends at a start that was not trained but made by a tool (its folder's `provenance.json`, e.g.
    `tools.float_from_int8`); `origin` gives that tool's command.
    """
    chain = []
    while True:
        chain.append((run, json.loads((run / "config.json").read_text()),
                      json.loads((run / "metrics.json").read_text())))
        start = chain[-1][1].get("init_from")
        if not start or (Path(start).parent / PROVENANCE).is_file():
            return chain[::-1]
        run = Path(start).parent
        if not (run / "metrics.json").exists():
            raise FileNotFoundError(f"{chain[-1][0]} continued from {start}, but {run} is not a finished run folder")


def origin(chain: list[tuple[Path, dict, dict]]) -> dict:
    """The `provenance.json` ({command, note}) of the folder the oldest leg started from, if a tool made it."""
    start = chain[0][1].get("init_from")
    path = Path(start).parent / PROVENANCE if start else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def train_command(cfg: dict) -> str:
    """The `marsseg-train` line that reproduces a run: the default config plus this run's overrides."""
    base = json.loads(DEFAULT_CONFIG.read_text())
    cfg = {**LEGACY, **cfg}  # a config without a key predates the option
    if not cfg["logit_adjust"]:
        del cfg["logit_adjust_scales"]
    sets = [f"--set {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in cfg.items()
            if k not in ("data", "out_dir", "run_name") and base.get(k) != v]
    return " ".join(["marsseg-train --config train/configs/default.json --data ai4mars-frames-128.npz",
                     f"--run-name {cfg['run_name']}", *sets])


def frame_level(run: Path) -> str:
    """Card lines from `marsseg-eval … --output <run>/eval` (frame level, camera degradations), when it was run."""
    path = run / "eval" / "eval.json"
    if not path.is_file():
        return "  Frame level: not evaluated (`marsseg-eval … --output <run>/eval`).\n"
    ev = json.loads(path.read_text())
    lines = [f"  Frame level (`marsseg-eval`, int8, {ev['frames']} validation frames): " + ", ".join(
        f"overlap {r['overlap']:g} {r['mean_iou']:.4f}" for r in ev["results"])]
    if ev.get("corruptions"):
        c = ev["corruptions"]
        w = c["worst_severity_2"]
        lines.append(f"  Under camera degradations (`--corruptions`, overlap {c['overlap']:g}, 12 kinds × 3 "
                     f"severities): corrupted mean IoU {c['corrupted_mean_iou']:.4f} (clean "
                     f"{c['clean']['mean_iou']:.4f}, drop {c['drop']:.4f}); worst at severity 2: {w['corruption']} "
                     f"{w['mean_iou']:.4f}")
    return ".\n".join(lines) + ".\n"


def robustness_table(studies: dict[str, dict]) -> str:
    """Markdown table of corruption × severity mean IoU for each named model's `--corruptions` study."""
    names = list(studies)
    head = "| degradation | " + " | ".join(f"{n} s1 | s2 | s3" for n in names) + " |"
    rule = "|---|" + "---|---|---|" * len(names)
    kinds = list(dict.fromkeys(r["corruption"] for s in studies.values() for r in s["results"]))
    rows = []
    for label, pick in (("clean", lambda s: [s["clean"]["mean_iou"], "", ""]),
                        *((k, lambda s, k=k: [r["mean_iou"] for r in s["results"] if r["corruption"] == k])
                          for k in kinds),
                        ("**corrupted mean**", lambda s: [s["corrupted_mean_iou"], "", ""])):
        cells = [f"{v:.4f}" if isinstance(v, float) else v for s in studies.values() for v in pick(s)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def adjustment(run: Path, cfg: dict, metrics: dict) -> tuple[str, str]:
    """(card line, reproduce line) for the run's logit adjustment: made by training, or afterwards by marsseg-adjust."""
    a = metrics.get("logit_adjustment")
    if not a:
        return "", ""
    scales = a.get("scales", [1.0])
    scaled = "" if scales == [1.0] else (
        f" ({a['scale']:g} × the fitted {a['fitted_bias']}, the best on validation tiles of the scales "
        f"{', '.join(f'{x:g}' for x in scales)})")
    line = (f"  Logit adjustment (`marsseg/train/prior.py`): offsets {a['bias']}{scaled} added to the logits, "
            f"fitted on {a['train_tiles']} training tiles (their mean IoU {a['train_miou_before']:.4f} → "
            f"{a['train_miou_after']:.4f}); validation float mean IoU {a['val_miou_before']:.4f} → "
            f"{metrics['mean_iou']:.4f}.\n")
    if a.get("made_by", "training" if cfg.get("logit_adjust") else "marsseg-adjust") == "training":
        return line, ""
    trained = cfg["run_name"]
    into = "" if trained == run.name else f" --output runs/{run.name}"
    opts = "" if scales == [1.0] else " --scales " + " ".join(f"{x:g}" for x in scales)
    return line, f"marsseg-adjust runs/{trained}{into}{opts}"


def reproduce(chain: list[tuple[Path, dict, dict]]) -> list[str]:
    """The commands that rebuild a lineage, oldest first: each leg's training line, then its `marsseg-adjust` line
    when it was adjusted after training (e.g. its offsets taken out before a quantization-aware leg)."""
    made = [origin(chain)["command"]] if origin(chain) else []
    return made + [line for leg, c, m in chain for line in (train_command(c), adjustment(leg, c, m)[1]) if line]


def model_card(run: Path, export: dict, split: dict, meta: dict, baseline: Path | None = None) -> str:
    r = {x["name"]: x for x in export["results"]}
    names = ("keras_float32", "tflite_float32", "tflite_int8")
    rows = "\n".join(
        f"| {n} | {r[n]['mean_iou']:.4f} | " + " | ".join(f"{v:.3f}" for v in r[n]["per_class_iou"].values())
        + f" | {r[n].get('argmax_agreement', 1.0):.4f} |" for n in names)
    chain = lineage(run)
    _, cfg, metrics = chain[-1]
    legs = "\n".join(
        f"| `{leg.name}` | {c.get('init_from') or 'scratch'} | {c['learning_rate']}"
        f"{'' if c.get('schedule', 'plateau') == 'plateau' else ', ' + c['schedule']}"
        f"{', fake-quant' if c.get('fake_quant') else ''} | {c['rare_cap']} | "
        f"{c.get('ema', 0.0)} | {m['epochs_run']} (best {m['best_epoch']}) | {m['wall_seconds'] / 60:.0f} min | "
        f"{m['mean_iou']:.4f} |" for leg, c, m in chain)
    commands = "\n".join(f"  {line}" for line in reproduce(chain))
    adjust_line = adjustment(run, cfg, metrics)[0]
    gmac = metrics["macs_per_tile"] / 1e9
    eval_cmd = (f"marsseg-eval ai4mars-frames-128.npz --model runs/{run.name}/export/model_int8.tflite "
                f"--names runs/{run.name}/split.json --overlap 0.25 0 --corruptions --output runs/{run.name}/eval")
    start = origin(chain)
    started = f"  The first leg started from a model made by a tool, not trained: {start['note']}\n" if start else ""
    robustness = robustness_section(run, baseline)
    return f"""# Model card: bundled default marsseg model

- **Model**: dual U-Net (`{cfg['arch']}`), {metrics['parameters']:,} parameters, {gmac:.3f} GMAC
  per 64×128 tile; full-integer int8 TFLite (`model_int8.tflite`, {export['sizes_bytes']['int8']:,} bytes;
  float32 TFLite {export['sizes_bytes']['float32']:,} bytes), SHA-256 `{meta['model_sha256']}`.
- **Data**: `{Path(split['data']).name}` (sha256 `{split['data_sha256'][:16]}…`): 5,997 AI4Mars MSL navcam frames
  (NASA/JPL, crowd-labelled training pool), 128×128 grayscale; classes 0 background/unlabelled, 1 soil,
  2 bedrock, 3 sand, 4 big rock.
- **Split**: by frame, stratified on big-rock presence, seed {split['seed']}, validation fraction
  {split['val_fraction']}: {split['train_frames']} training / {split['val_frames']} validation frames
  ({metrics['val_tiles']} validation tiles). Validation frame names: `val_names.json`.
- **Training**: loss `{cfg['loss']}`, background weight {cfg['background_weight']}, batch {cfg['batch_size']},
  Adam, on {metrics['backend']} / CPU, in {len(chain)} leg(s); a CPU run is cut into time-budgeted legs,
  each starting from the previous leg's best checkpoint:
{started}
| run | started from | learning rate, schedule | class-weight cap | weight EMA | epochs | wall | val mean IoU (float) |
|---|---|---|---|---|---|---|---|
{legs}

- **Metrics** of `{run.name}` (validation tiles; mean IoU over classes 1–4, background-truth pixels ignored):

| model | mean IoU | soil | bedrock | sand | big rock | argmax agreement with Keras |
|---|---|---|---|---|---|---|
{rows}

  int8 − float Keras: {-export['int8_drop_points']:+.2f} mean-IoU points (the export gate allows a drop of at most
  {export['budget_points']}).
{adjust_line}  Ops: {", ".join(f"{k} ×{v}" for k, v in export['op_report']['ops'].items())}.
{frame_level(run)}{robustness}- **Reproduce** (in order; each leg's `init_from` is the previous leg's
  `runs/<name>/model.keras`):
  ```
{commands}
  marsseg-export --model runs/{run.name}/model.keras
  {eval_cmd}
  python -m tools.make_assets --run runs/{run.name}
  ```
- **Made**: {time.strftime('%Y-%m-%d')}.
- **Limits**: trained on MSL navcam frames downsampled 8× (1024→128); other cameras or ground scales need
  `--fov`/`--scale` or retraining. Labels are crowd-sourced and coarse at boundaries; big rock is rare (~0.5% of
  pixels) and the weakest class. Background is excluded from the loss, so the model never answers
  "unknown": sky and rover hardware get a terrain class.

Run config of `{run.name}`:
```json
{json.dumps(cfg, indent=1)}
```
"""


def robustness_section(run: Path, baseline: Path | None) -> str:
    """The card's corruption table: this model and, when given, the model it replaces (`--baseline eval.json`)."""
    path = run / "eval" / "eval.json"
    study = json.loads(path.read_text()).get("corruptions") if path.is_file() else None
    if not study:
        return ""
    studies = {}
    if baseline:
        old = json.loads(baseline.read_text())
        studies[f"before ({old.get('run_id') or old['model_sha256'][:8]})"] = old["corruptions"]
    studies[f"this model ({run.name})"] = study
    return ("- **Robustness** (int8, frame level; each degradation of `marsseg/edge/degrade.py` applied to the whole\n"
            "  frame before tiling at severities 1–3, seed 0; mean IoU over classes 1–4):\n\n"
            + robustness_table(studies) + "\n\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--export-dir", type=Path)
    p.add_argument("--data", help="frames file (default: the run's)")
    p.add_argument("--clip-frames", type=int, default=24)
    p.add_argument("--baseline", type=Path, help="eval.json (with --corruptions) of the model being replaced")
    a = p.parse_args(argv)
    exp = a.export_dir or a.run / "export"
    split = json.loads((a.run / "split.json").read_text())
    export = json.loads((exp / "export_report.json").read_text())
    if not export["passed"]:
        print(f"refusing to bundle: the export of {a.run} failed its gate", file=sys.stderr)
        return 1
    for suffix in (".tflite", ".json"):
        shutil.copy(exp / f"model_int8{suffix}", ASSETS / f"model_int8{suffix}")
    meta = json.loads((ASSETS / "model_int8.json").read_text())
    if meta.get("float_model"):
        shutil.copy(exp / meta["float_model"]["file"], ASSETS / meta["float_model"]["file"])
    write_text_atomic(ASSETS / "val_names.json", json.dumps(split["val_names"]))
    ds = D.load_dataset(D.resolve_data_path(a.data or split["data"]))
    clip = demo_clip(ds, split["val_names"], a.clip_frames)
    write_atomic(ASSETS / "demo_clip.npz", lambda f: np.savez_compressed(
        f.open("wb"), frames=clip.frames, masks=clip.masks, names=clip.names,
        provenance=f"{len(clip)} validation frames of run {a.run.name} from {Path(split['data']).name}"))
    write_text_atomic(ASSETS / "MODEL_CARD.md", model_card(a.run, export, split, meta, a.baseline))
    print(f"bundled {a.run} into {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
