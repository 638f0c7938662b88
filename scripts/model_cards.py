"""Model cards (and float16 weight copies) for the models of the CPU study grid.

For each model NAME of ``configs/experiments/cpu_grid.yaml`` trained under
``runs/grid-cpu/models/NAME``, writes ``models/study/NAME/model.safetensors`` (the exported
weights stored as float16; loading casts back to float32) and ``models/study/NAME/README.md``
with the exact recipe, the training log (steps, wall clock, validation loss), the evaluation
row of every metric with its bootstrap interval, the paired claims the model takes part in,
and optionally its ``stemstream bench --json`` latency. Nothing is measured here: every number
is read from the run's own files.

    python scripts/model_cards.py --eval docs/results \\
        --bench k1_tf50=runs/bench/k1_tf50.json --bench ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from stemstream import checkpoint
from stemstream.train.loop import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("cocola_harmonic", "cocola_percussive", "cocola_both", "beat_f", "fad_cocola")


def _training_log(run: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    return ([r for r in rows if "loss/train" in r], [r for r in rows if "loss/valid" in r])


def _what(config: dict) -> str:
    model = config["model"]
    family = config["family"]
    if family != "streaming":
        return {"prefix": "the offline prefix decoder (hears the whole input first)",
                "stemgen": "the offline StemGen masked language model (iterative decoding)",
                }.get(family, family)
    t_f, k = model.get("future_frames"), model.get("chunk_frames", 1)
    extra = ""
    if model.get("history_dropout"):
        extra = f", history dropout {model['history_dropout']:g}"
    return f"the streaming decoder, `k = {k}`, `t_f = {t_f}` frames ({t_f / 50:+g} s){extra}"


def _overrides(grid: dict, name: str) -> str:
    entry = grid["models"][name]
    return " ".join(entry) if isinstance(entry, list) else json.dumps(entry)


def card(name: str, run: Path, grid: dict, grid_path: Path, out: Path,
         eval_dir: Path | None, bench: Path | None) -> str:
    config = yaml.safe_load((run / "config.yaml").read_text())
    train, valid = _training_log(run)
    tensors, meta = checkpoint.load(out / "model.safetensors")
    params = sum(t.numel() for k, t in tensors.items() if k.startswith("model/"))
    backbone = meta["model"]["backbone"]
    lines = [
        f"# Model card: `{name}` (CPU study grid)",
        "",
        f"{_what(config).capitalize()}; backbone {backbone['num_layers']} blocks x "
        f"{backbone['dim']}, {params / 1e6:.2f}M parameters. One of the models of "
        "`docs/results.md`, trained with the compute-limited recipe of "
        f"`{grid_path}`.",
        "",
        f"- Weights: `models/study/{name}/model.safetensors`, stored as float16 "
        f"({(out / 'model.safetensors').stat().st_size / 2**20:.1f} MiB; loading casts back "
        f"to float32). The evaluation below ran the float32 export "
        f"`{run / 'model.safetensors'}` of the same step.",
        f"- Use: `stemstream generate --checkpoint models/study/{name}/model.safetensors "
        "--input MIX.wav --instrument Bass -o stem.wav`"
        + (" (or `stemstream accompany` / `bench --model` with the same path)"
           if config["family"] == "streaming" else "") + ".",
        "",
        "## Training",
        "```bash",
        f"stemstream experiment grid --config {grid_path}     # trains every model; resumes",
        "# the same run alone:",
        f"stemstream train --config {grid['train_config']} out_dir={run} \\",
        f"    {_overrides(grid, name)}",
        f"stemstream export {run}/checkpoints/step_{int(config['steps']):07d}.safetensors "
        f"-o {run}/model.safetensors   # the grid does this itself",
        f"stemstream export {run}/model.safetensors -o models/study/{name}/model.safetensors "
        "--dtype float16",
        "```",
        f"Started from `{config.get('init_from')}`"
        + (" (the step-6,000 weights shipped as `stemstream/assets/models/"
           "streaming-cpu.safetensors`)" if "streaming-cpu-step6000" in
           str(config.get("init_from")) else "")
        + (" (only the tensors both families share; `init_shared`)"
           if config.get("init_shared") else "") + ".",
        "",
        "| key | value |",
        "|---|---|",
    ]
    for key in ("dump_dir", "family", "steps", "batch_size", "lr", "min_lr", "warmup_steps",
                "grad_clip", "weight_decay", "threads", "seed"):
        lines.append(f"| {key} | `{config.get(key)}` |")
    for key, value in config["model"].items():
        lines.append(f"| model.{key} | `{value}` |")
    if train:
        minutes = (train[-1]["time"] - train[0]["time"]) / 60
        step_s = minutes * 60 / max(train[-1]["step"] - train[0]["step"], 1)
        lines += [
            "",
            f"Trained {train[-1]['step']} steps; {minutes:.0f} min of wall clock from the "
            f"first to the last logged step ({step_s:.1f} s per step, at one thread, beside "
            "other jobs on the 2-core development machine). Final training loss "
            f"{train[-1]['loss/train']:.3f}.",
        ]
    if valid:
        lines += [
            "",
            f"Validation loss (mean cross-entropy over {config['model']['num_codebooks']} "
            + ("codebooks, on the masked cells only (not comparable with the decoders' loss), "
               if config["family"] == "stemgen" else "codebooks, ")
            + f"first {config.get('valid_batches', 8)} validation batches of "
            f"{config['batch_size']} windows; chance is ln 1024 = 6.93):",
            "",
            "| step | " + " | ".join(str(r["step"]) for r in valid) + " |",
            "|---|" + "---|" * len(valid),
            "| loss/valid | " + " | ".join(f"{r['loss/valid']:.3f}" for r in valid) + " |",
        ]
    if eval_dir is not None:
        lines += _evaluation(name, eval_dir)
    if bench is not None:
        lines += _bench(bench)
    return "\n".join(lines) + "\n"


def _evaluation(name: str, eval_dir: Path) -> list[str]:
    means = json.loads((eval_dir / "metrics.json").read_text())
    if name not in means:
        return ["", "## Evaluation", "", f"Not in `{eval_dir}`."]
    ci = json.loads((eval_dir / "metrics_ci.json").read_text())
    info = json.loads((eval_dir / "run.json").read_text())
    lines = ["", "## Evaluation", "",
             f"`{eval_dir}` ({info['examples']} windows of {info['config']['corpus']} "
             f"split `{info['config']['split']}`; bootstrap 95% intervals; see "
             "`docs/results.md` for the command):", "",
             "| system | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    steps = info.get("systems", {}).get(name, {}).get("steps_per_level")
    if steps:
        lines[-2:-2] = [f"Sampled with {'/'.join(map(str, steps))} iterations per level "
                        f"({sum(steps)} in all).", ""]
    for system in ("ground_truth", "random_pairing", name):
        cells = []
        for metric in METRICS:
            value = means[system].get(metric, float("nan"))
            low, high = ci.get(system, {}).get(metric, (None, None))
            cells.append(f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None
                                            else ""))
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    claims = [c for c in json.loads((eval_dir / "claims.json").read_text())
              if name in (c["better"], c["worse"])]
    if claims:
        lines += ["", f"Paired claims involving `{name}` (A - B, paired bootstrap 95% "
                  f"interval, Bonferroni-adjusted Wilcoxon p):", "",
                  "| claim | A | B | metric | A - B [95% CI] | p (adj.) | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['better']} | {c['worse']} | {c['metric']} | "
                  f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | "
                  f"{c['p_adjusted']:.2g} | {c['verdict']} |" for c in claims]
    return lines


def _bench(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    split = report["split_ms_per_frame"]
    latency = report.get("feasibility", {}).get("effective_latency_s")
    return ["", "## Latency", "",
            f"`stemstream bench --model <this model> --no-grid --threads "
            f"{report['threads']} --json` ({report['seconds']:g} s streamed; `{path}`):", "",
            "| RTF | codec in / model / codec out (ms per frame) | p99 frame (ms) | "
            "effective latency (s) |", "|---|---|---|---|",
            f"| {report['rtf']:.3f} | {split['codec_in']:.2f} / {split['model']:.2f} / "
            f"{split['codec_out']:.2f} | {report['p99_frame_ms']:.1f} | "
            + (f"{latency:.2f}" if latency is not None else "n/a") + " |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=Path("configs/experiments/cpu_grid.yaml"))
    parser.add_argument("--eval", type=Path, default=None, help="an eval folder with "
                        "metrics.json, metrics_ci.json, run.json and claims.json")
    parser.add_argument("--bench", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--out", type=Path, default=Path("models/study"))
    parser.add_argument("names", nargs="*", help="grid models (default: all trained ones)")
    args = parser.parse_args()
    grid = yaml.safe_load(args.grid.read_text())
    benches = dict(item.split("=", 1) for item in args.bench)
    root = Path(grid["out_dir"]) / "models"
    names = args.names or [n for n in grid["models"] if (root / n / "model.safetensors").is_file()]
    for name in names:
        run, out = root / name, args.out / name
        out.mkdir(parents=True, exist_ok=True)
        export_checkpoint(run / "model.safetensors", out / "model.safetensors", "float16")
        text = card(name, run, grid, args.grid, out, args.eval,
                    Path(benches[name]) if name in benches else None)
        (out / "README.md").write_text(text)
        print(f"wrote {out}/README.md and model.safetensors")


if __name__ == "__main__":
    main()
