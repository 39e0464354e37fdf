"""``train.compile`` in the training loop: steps per second off and on, compile time, graphs compiled.

Runs ``speechbs pretrain recipes/wav2vec2/tiny_builtin.toml`` in this process (the loop a user
runs: the recipe's dropout, real loading, varying shapes) on a few minutes of the built-in corpus,
once per setting and repeat, alternating. Compiled runs start from cold caches (dynamo reset,
inductor's on-disk caches off), so their first steps include the whole compile.

Per run, from its ``metrics.jsonl``: the graphs compiled (``num_compiled_graphs`` after the last
step), the steps that compiled something, the compile time (what those steps took beyond a
steady step), and the steady step: the median of the steps after the last one that compiled and
after ``--warmup`` steps, as steps per second and audio-s per s. Rows are medians over repeats.

Usage: python bench/compile_train.py [--steps 30] [--settings off on] [--num-lengths 16]
       [--backend inductor] [--repeats 2] [--minutes 4] [--batch-seconds 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from speechbs.cli import main as cli_main
from speechbs.rundir import environment

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "wav2vec2" / "tiny_builtin.toml"


def run_once(manifests: dict[str, Path], out: Path, name: str, args: argparse.Namespace,
             compiled: list[str]) -> list[dict]:
    """One pretraining run; its per-step train records."""
    if compiled:  # cold: this run compiles everything it runs
        import torch._functorch.config
        import torch._inductor.config

        torch._dynamo.reset()
        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
    sets = [f"data.train_manifest={manifests['train']}", 'data.valid_manifest=""', f"run.output_dir={out}",
            f"run.name={name}", f"train.num_steps={args.steps}", f"batch.seconds={args.batch_seconds}",
            "train.valid_every=0", "train.log_every=1000",
            "train.checkpoint_every=100000", "train.grad_noise_every=0", "data.num_workers=0", *compiled]
    if cli_main(["pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]) != 0:
        raise SystemExit(f"run {name}: speechbs pretrain failed (its message is above)")
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def summarize(records: list[dict], warmup: int) -> dict:
    """Graphs, compile time and the steady step of one run (see the module docstring)."""
    graphs = [r.get("num_compiled_graphs", 0) for r in records]
    compiling = [k for k in range(len(records)) if graphs[k] > (graphs[k - 1] if k else 0)]
    start = max(warmup, compiling[-1] + 1 if compiling else 0)
    steady = records[start:] or records[-1:]
    step_s = statistics.median(r["step_s"] for r in steady)
    return {"graphs": graphs[-1], "compiling_steps": len(compiling),
            "compile_s": sum(records[k]["step_s"] - step_s for k in compiling),
            "first_step_s": records[0]["step_s"], "step_s": step_s, "steps_per_s": 1.0 / step_s,
            "audio_s_per_s": statistics.median(r["audio_s_per_s"] for r in steady),
            "packing": statistics.mean(r["packing"] for r in records), "steady_steps": len(steady)}


def settings_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """Row label -> the overrides that make it."""
    rows: dict[str, list[str]] = {}
    for setting in args.settings:
        if setting == "off":
            rows["off"] = []
            continue
        for num in args.num_lengths:
            rows[f"on, {num} lengths"] = ["train.compile=true", f'train.compile_backend="{args.backend}"',
                                          f"train.compile_num_lengths={num}"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--settings", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--num-lengths", nargs="+", type=int, default=[16], help="train.compile_num_lengths values")
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the steady step")
    parser.add_argument("--minutes", type=float, default=4.0, help="built-in corpus to train on, min")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="batch.seconds (the recipe's: 60)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    from speechbs.data.corpus import build_corpus

    rows = settings_of(args)
    runs: dict[str, list[dict]] = {label: [] for label in rows}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp) / "audio", Path(tmp) / "manifests", minutes=args.minutes, seed=5)
        for repeat in range(args.repeats):
            for k, (label, overrides) in enumerate(rows.items()):
                records = run_once(corpus.manifests, Path(tmp) / "runs", f"r{repeat}-{k}", args, overrides)
                runs[label].append(summarize(records, args.warmup))
                print(f"{label}, run {repeat + 1}: {json.dumps(runs[label][-1])}", flush=True)
    table = {label: {key: statistics.median(run[key] for run in done) for key in done[0]}
             for label, done in runs.items()}
    info = environment("cpu")
    print(f"\n{args.steps} steps of {args.batch_seconds:g} s (recipes/wav2vec2/tiny_builtin.toml) on "
          f"{args.minutes:g} min of the built-in corpus, backend {args.backend}, median of {args.repeats}; "
          f"{info['device_name']}, {info['threads']} threads, torch {info['torch']}, {info['date']}\n")
    print_table(table)
    result = {"steps": args.steps, "backend": args.backend, "machine": info, "runs": runs, "rows": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def print_table(table: dict[str, dict]) -> None:
    print("| train.compile | graphs compiled | steps that compiled | compile s | first step s "
          "| steady step s | steps/s | audio-s/s | packing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in table.items():
        print(f"| {label} | {r['graphs']:.0f} | {r['compiling_steps']:.0f} | {r['compile_s']:.1f} | "
              f"{r['first_step_s']:.1f} | {r['step_s']:.3f} | {r['steps_per_s']:.2f} | {r['audio_s_per_s']:.1f} | "
              f"{r['packing']:.3f} |")


if __name__ == "__main__":
    main()
