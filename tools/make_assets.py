"""Bundle a trained + exported model as the package default (edge/assets/), with its model card and demo clip.

  python -m tools.make_assets --run runs/default-v1

Copies `<run>/export/model_int8.{tflite,json}` and the float `model.keras` exported beside them, writes
`val_names.json` (the run's validation frames), `demo_clip.npz` (real validation frames with their masks, spread
over the split, big rock included) and `MODEL_CARD.md` (data, split, config, commands, metrics, robustness, date).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from marsseg.core.frames import resolve_data_path
from marsseg.core.io import write_atomic
from marsseg.train import data as D
from marsseg.train.config import TrainConfig
from marsseg.train.run import RunFolder

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "edge" / "assets"
DEFAULT_CONFIG = ROOT / "train" / "configs" / "default.json"  # the recipe
PROVENANCE = "provenance.json"  # beside a start model with no run folder here: made by a tool, or an earlier bundle


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


Leg = tuple[Path, TrainConfig, dict]  # (run folder, its config, its metrics)
RUN_ONLY = ("data.path", "out_dir", "run_name", "time_budget_min")  # not part of a recipe
LENGTH_ONLY = ("epoch_scale",)  # how long a recipe runs, not what it is


def lineage(run: Path) -> list[Leg]:
    """(run folder, config, metrics) for `run` and every run it continued from (`init_from`), oldest first.

    The chain also ends at a start whose run folder is not here (its folder's `provenance.json`: a tool's output such
    as `tools.float_from_int8`'s, or an earlier bundle taken from git); `origin` gives the command that recreates it.
    """
    chain = []
    while True:
        folder = RunFolder(run)
        chain.append((run, folder.config(), folder.metrics()))
        start = chain[-1][1].init_from
        if not start or (Path(start).parent / PROVENANCE).is_file():
            return chain[::-1]
        run = Path(start).parent
        if not RunFolder(run).finished:
            raise FileNotFoundError(f"{chain[-1][0]} continued from {start}, but {run} is not a finished run folder")


def origin(chain: list[Leg]) -> dict:
    """The `provenance.json` ({command, note}) of the folder the oldest leg started from, if a tool made it."""
    start = chain[0][1].init_from
    path = Path(start).parent / PROVENANCE if start else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def _leaves(d: dict, prefix: str = "") -> dict:
    """{"optim.learning_rate": 1e-4, ...}: a nested config as dotted keys (phases stay one value)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def recipe_changes(cfg: TrainConfig) -> dict:
    """The keys where a run's config differs from the default recipe (train/configs/default.json)."""
    base = _leaves(dataclasses.asdict(TrainConfig.load(DEFAULT_CONFIG)))
    mine = _leaves(dataclasses.asdict(cfg))
    return {k: v for k, v in mine.items() if k not in RUN_ONLY and json.dumps(base.get(k)) != json.dumps(v)}


def train_command(cfg: TrainConfig) -> str:
    """The `marsseg-train` line that reproduces a run: the default recipe plus this run's changes to it."""
    sets = [f"--set {shlex.quote(k + '=' + (v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))))}"
            for k, v in recipe_changes(cfg).items()]
    return " ".join(["marsseg-train --data ai4mars-frames-128.npz", f"--run-name {cfg.run_name}", *sets])


def frame_level(run: Path) -> str:
    """Card lines from `marsseg-eval … --output <run>/eval` (frame level, camera degradations), when it was run."""
    path = run / "eval" / "eval.json"
    if not path.is_file():
        return "  Frame level: not evaluated (`marsseg-eval … --output <run>/eval`).\n"
    ev = json.loads(path.read_text())
    floor = ev["results"][0].get("exposure_floor")
    lifted = (f"; frames darker than {floor:.1f} DN lifted to it, the runtime's default (`--exposure-floor`, "
              "docs/robustness.md)" if floor else "")
    lines = [f"  Frame level (`marsseg-eval`, int8, {ev['frames']} validation frames{lifted}): " + ", ".join(
        f"overlap {r['overlap']:g} {r['mean_iou']:.4f}" for r in ev["results"])]
    if ev.get("corruptions"):
        c = ev["corruptions"]
        w = c["worst_severity_2"]
        kinds = len({r["corruption"] for r in c["results"]})
        lines.append(f"  Under camera degradations (`--corruptions`, overlap {c['overlap']:g}, {kinds} kinds × 3 "
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


def adjustment(run: Path, cfg: TrainConfig, metrics: dict) -> tuple[str, str]:
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
    if a.get("made_by", "training" if cfg.adjust.logit_adjust else "marsseg-adjust") == "training":
        return line, ""
    trained = cfg.run_name
    into = "" if trained == run.name else f" --output runs/{run.name}"
    opts = "" if scales == [1.0] else " --scales " + " ".join(f"{x:g}" for x in scales)
    return line, f"marsseg-adjust runs/{trained}{into}{opts}"


def reproduce(chain: list[Leg]) -> list[str]:
    """The commands that rebuild a lineage, oldest first: each leg's training line, then its `marsseg-adjust` line
    when it was adjusted after training (e.g. its offsets taken out before a quantization-aware leg)."""
    made = [origin(chain)["command"]] if origin(chain) else []
    return made + [line for leg, c, m in chain for line in (train_command(c), adjustment(leg, c, m)[1]) if line]


def phase_rows(chain: list[Leg]) -> list[str]:
    """One table row per phase of every run of the lineage (a run from before phases is one phase)."""
    rows = []
    for leg, cfg, m in chain:
        phases = cfg.phase_configs()
        records = m.get("phases") or [{"name": phases[0].name, "epochs_run": m["epochs_run"], "seconds":
                                       m["wall_seconds"], "best_epoch": m["best_epoch"]}]
        for k, (p, r) in enumerate(zip(phases, records, strict=True)):
            o, d = p.optim, p.data
            start = (cfg.init_from or "scratch") if k == 0 else f"phase {phases[k - 1].name}"
            how = [f"{o.learning_rate:g}" + ("" if o.schedule == "plateau" else f", {o.schedule}"),
                   *(["fake-quant"] if p.quant.fake_quant else []),
                   *([f"cameras {d.degrade:g}" + ("" if d.camera_labels == 1 else f" (labels {d.camera_labels:g})")]
                     if d.degrade else []),
                   *([f"distill {o.distill:g}" + (f" from {o.teacher}" if o.teacher else "")] if o.distill else []),
                   *(["BN frozen"] if o.freeze_bn else [])]
            score = (f"{r['val_miou']:.4f} (camera {r['val_miou_camera']:.4f})" if "val_miou" in r
                     else f"{m['mean_iou']:.4f}")
            rows.append(f"| `{leg.name}`{'' if len(phases) == 1 else ' / ' + p.name} | {start} | {', '.join(how)} | "
                        f"{o.rare_cap:g} | {o.ema:g} | {r['epochs_run']} (best {r['best_epoch']}) | "
                        f"{r['seconds'] / 60:.0f} min | {score} |")
    return rows


def recipe_section(chain: list[Leg], short: Path | None) -> str:
    """Whether the model came from the one command of the default recipe; if not, a shortened run of it."""
    leg, cfg, m = chain[-1]
    recipe = TrainConfig.load(DEFAULT_CONFIG)
    phases = ", ".join(f"{p.name} ({p.optim.epochs} epochs)" for p in recipe.phase_configs())
    if len(chain) == 1 and not recipe_changes(cfg).keys() - set(LENGTH_ONLY):
        resumed = m.get("resumed")
        legs = f" It ran in legs, each continued with `marsseg-train --resume runs/{leg.name}`." if resumed else ""
        length = f" at {cfg.epoch_scale:g}× its length" if cfg.epoch_scale != 1 else ""
        return (f"  Made by the default recipe{length} in one command (`train/configs/default.json`: {phases}):\n"
                f"  `{train_command(cfg)}`.{legs}\n\n")
    text = (f"  **Not (yet) made by the default recipe's one command** (`marsseg-train`, `train/configs/default.json`: "
            f"{phases}): it came from the run(s) above, commands under Reproduce.\n")
    if short is None:
        return text + "\n"
    s = RunFolder(short)
    scfg, sm = s.config(), s.metrics()
    rows = "\n".join(phase_rows([(short, scfg, sm)]))
    export = s.export_dir / "export_report.json"
    int8 = ""
    if export.is_file():
        e = json.loads(export.read_text())
        r = {x["name"]: x for x in e["results"]}
        gate = "passed" if e["passed"] else f"over the {e['budget_points']:g}-point gate, so not publishable"
        int8 = (f"; int8 {r['tflite_int8']['mean_iou']:.4f}, {e['int8_drop_points']:.2f} points below float ({gate}; "
                f"`marsseg-export --model {short}/model.keras`)")
    return text + (
        f"  A proportionally shortened run of the full recipe shows every phase working (`{train_command(scfg)}`, "
        f"epoch scale {scfg.epoch_scale:g}, {sm['wall_seconds'] / 60:.0f} min on this CPU): validation tiles float "
        f"{sm['mean_iou']:.4f}{int8}.\n\n"
        "| run / phase | started from | learning rate, schedule | class-weight cap | weight EMA | epochs | wall "
        "| val mean IoU |\n|---|---|---|---|---|---|---|---|\n" + rows + "\n\n")


def model_card(run: Path, export: dict, split: dict, meta: dict, baseline: Path | None = None,
               recipe_run: Path | None = None) -> str:
    r = {x["name"]: x for x in export["results"]}
    names = ("keras_float32", "tflite_float32", "tflite_int8")
    rows = "\n".join(
        f"| {n} | {r[n]['mean_iou']:.4f} | " + " | ".join(f"{v:.3f}" for v in r[n]["per_class_iou"].values())
        + f" | {r[n].get('argmax_agreement', 1.0):.4f} |" for n in names)
    chain = lineage(run)
    _, cfg, metrics = chain[-1]
    last = cfg.phase_configs()[-1].optim
    legs = "\n".join(phase_rows(chain))
    commands = "\n".join(f"  {line}" for line in reproduce(chain))
    adjust_line = adjustment(run, cfg, metrics)[0]
    gmac = metrics["macs_per_tile"] / 1e9
    eval_cmd = (f"marsseg-eval ai4mars-frames-128.npz --model runs/{run.name}/export/model_int8.tflite "
                f"--names runs/{run.name}/split.json --overlap 0.25 0 --corruptions --output runs/{run.name}/eval")
    start = origin(chain)
    started = (f"  The first leg started from a model whose run folder is not kept (the first command under Reproduce "
               f"recreates it): {start['note']}\n" if start else "")
    robustness = robustness_section(run, baseline)
    return f"""# Model card: bundled default marsseg model

- **Model**: dual U-Net (`{cfg.model.arch}`), {metrics['parameters']:,} parameters, {gmac:.3f} GMAC
  per 64×128 tile; full-integer int8 TFLite (`model_int8.tflite`, {export['sizes_bytes']['int8']:,} bytes;
  float32 TFLite {export['sizes_bytes']['float32']:,} bytes), SHA-256 `{meta['model_sha256']}`.
- **Data**: `{Path(split['data']).name}` (sha256 `{split['data_sha256'][:16]}…`): 5,997 AI4Mars MSL navcam frames
  (NASA/JPL, crowd-labelled training pool), 128×128 grayscale; classes 0 background/unlabelled, 1 soil,
  2 bedrock, 3 sand, 4 big rock.
- **Split**: by frame, stratified on big-rock presence, seed {split['seed']}, validation fraction
  {split['val_fraction']}: {split['train_frames']} training / {split['val_frames']} validation frames
  ({metrics['val_tiles']} validation tiles). Validation frame names: `val_names.json`.
- **Training**: loss `{last.loss}`, background weight {last.background_weight}, batch {last.batch_size},
  Adam, on {metrics['backend']} / CPU, in {len(chain)} run(s), each phase starting from the previous one's best
  checkpoint:
{started}
| run / phase | started from | learning rate, schedule | class-weight cap | weight EMA | epochs | wall | val mean IoU |
|---|---|---|---|---|---|---|---|
{legs}

{recipe_section(chain, recipe_run)}
- **Metrics** of `{run.name}` (validation tiles; mean IoU over classes 1–4, background-truth pixels ignored):

| model | mean IoU | soil | bedrock | sand | big rock | argmax agreement with Keras |
|---|---|---|---|---|---|---|
{rows}

  int8 − float Keras: {-export['int8_drop_points']:+.2f} mean-IoU points (the export gate allows a drop of at most
  {export['budget_points']}).
{adjust_line}  Ops: {", ".join(f"{k} ×{v}" for k, v in export['op_report']['ops'].items())}.
{frame_level(run)}{robustness}- **Reproduce** (in order; each run's `init_from` is the previous run's
  `runs/<name>/model.keras`; in today's config keys, so a run made before a change to the training code gives a
  close, not bit-identical, model):
  ```
{commands}
  marsseg-export --model runs/{run.name}/model.keras
  {eval_cmd}
  python -m tools.make_assets --run runs/{run.name}{f" --baseline {baseline}" if baseline else ""}{
      f" --recipe-run {recipe_run}" if recipe_run else ""}
  ```
- **Made**: {time.strftime('%Y-%m-%d')}.
- **Limits**: trained on MSL navcam frames downsampled 8× (1024→128); other cameras or ground scales need
  `--fov`/`--scale` or retraining. Labels are crowd-sourced and coarse at boundaries; big rock is rare (~0.5% of
  pixels) and the weakest class. Background is excluded from the loss, so the model never answers
  "unknown": sky and rover hardware get a terrain class.

Run config of `{run.name}`:
```json
{cfg.to_json()}
```
"""


def _study(path: Path) -> dict | None:
    """The `--corruptions` study of a `marsseg-eval` report, None when it was not run."""
    return json.loads(path.read_text()).get("corruptions") if path.is_file() else None


def _floor(study: dict) -> str:
    """How a study's frames met the exposure floor, for a table heading (studies before it had none)."""
    return f", exposure floor {study['exposure_floor']:.1f} DN" if study.get("exposure_floor") else ""


def robustness_section(run: Path, baseline: Path | None) -> str:
    """The card's corruption tables: this model and, when given, the model it replaces (`--baseline eval.json`);
    then, when `marsseg-eval … --corruptions held-out --output <run>/held-out` was run, the camera families nobody
    trained for, so a user sees which camera stages to switch off."""
    study = _study(run / "eval" / "eval.json")
    if not study:
        return ""
    studies = {}
    if baseline:
        old = json.loads(baseline.read_text())
        studies[f"before ({old.get('run_id') or old['model_sha256'][:8]}{_floor(old['corruptions'])})"] = \
            old["corruptions"]
    studies[f"this model ({run.name}{_floor(study)})"] = study
    return ("- **Robustness** (int8, frame level; each degradation of `marsseg/core/degrade.py` applied to the whole\n"
            "  frame before tiling at severities 1–3, seed 0; mean IoU over classes 1–4):\n\n"
            + robustness_table(studies) + "\n\n" + held_out_section(run))


def held_out_section(run: Path) -> str:
    held = _study(run / "held-out" / "eval.json")
    if not held:
        return ""
    return ("- **Camera stages it was not trained for** (`marsseg-eval … --corruptions held-out --output "
            f"runs/{run.name}/held-out`; drop from clean {held['drop']:.4f}). Worst at severity 2: "
            f"{held['worst_severity_2']['corruption']} {held['worst_severity_2']['mean_iou']:.4f} (keep the "
            "worst of these out of the camera's pipeline):\n\n" + robustness_table({f"this model ({run.name})": held})
            + "\n\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--export-dir", type=Path)
    p.add_argument("--data", help="frames file (default: the run's)")
    p.add_argument("--clip-frames", type=int, default=24)
    p.add_argument("--baseline", type=Path, help="eval.json (with --corruptions) of the model being replaced")
    p.add_argument("--recipe-run", type=Path,
                   help="a shortened run of the default recipe (--epoch-scale), quoted when the model is not one")
    a = p.parse_args(argv)
    try:
        files = bundle(a.run, a.export_dir or a.run / "export", a.data, a.clip_frames, a.baseline, a.recipe_run)
    except (OSError, ValueError, KeyError) as e:  # DataError and RunError are ValueErrors
        print(f"make_assets: error: {e}; nothing in {ASSETS} was changed", file=sys.stderr)
        return 1
    for name, write in files.items():  # only now: a failure above leaves the bundle as it was
        write_atomic(ASSETS / name, write)
    print(f"bundled {a.run} into {ASSETS}")
    return 0


def bundle(run: Path, exp: Path, data: str | None, clip_frames: int, baseline: Path | None,
           recipe_run: Path | None) -> dict:
    """Every file of the bundle, as name -> writer, all made before any is written."""
    split = RunFolder(run).split()
    export = json.loads((exp / "export_report.json").read_text())
    if not export["passed"]:
        raise ValueError(f"refusing to bundle: the export of {run} failed its gate")
    meta = json.loads((exp / "model_int8.json").read_text())
    copies = ["model_int8.tflite", "model_int8.json"] + ([meta["float_model"]["file"]] if meta.get("float_model")
                                                           else [])
    missing = [name for name in copies if not (exp / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{exp} lacks {missing}: export the run again")
    files = {name: lambda f, src=exp / name: shutil.copyfile(src, f) for name in copies}
    ds = D.load_dataset(resolve_data_path(data or split["data"]))
    clip = demo_clip(ds, split["val_names"], clip_frames)
    card = model_card(run, export, split, meta, baseline, recipe_run)
    files["val_names.json"] = lambda f: f.write_bytes(json.dumps(split["val_names"]).encode())
    files["demo_clip.npz"] = lambda f: np.savez_compressed(
        f.open("wb"), frames=clip.frames, masks=clip.masks, names=clip.names,
        provenance=f"{len(clip)} validation frames of run {run.name} from {Path(split['data']).name}")
    files["MODEL_CARD.md"] = lambda f: f.write_bytes(card.encode())  # UTF-8 whatever the locale
    return files


if __name__ == "__main__":
    sys.exit(main())
