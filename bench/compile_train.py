"""``train.compile`` in training: steps per second off and on, compile time, graphs compiled.

Trains ``recipes/wav2vec2/tiny_builtin.toml`` (or ``--recipe``; its dropout, its 60 s batches of
whole utterances, so every step has other shapes) on a few minutes of the built-in corpus with the
training loop's own parts: the batch planner (padded lengths when compiled), the loader, the
pretraining task and the step engine. Each setting has its own model (same initial weights),
optimizer and data stream, and the settings take turns step by step in one process, so that
other jobs on the machine slow them alike. Compiled settings start from cold caches (dynamo
reset, inductor's on-disk caches off): their first steps include the whole compile.

Per setting: the graphs compiled, the steps that compiled something, the compile time (what
those steps took beyond a steady step), and the steady step: the median step time after the
last step that compiled and after ``--warmup`` steps, as steps per second and audio-s per s,
and the paired speed against ``off`` (:func:`add_paired_speed`).
On a machine with a GPU the steps run there, as training's would.

Usage: python bench/compile_train.py [--recipe R] [--steps 30] [--settings off on] [--num-lengths 16]
       [--backend inductor] [--minutes 4] [--batch-seconds 60] [--set KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from speechbs.configio import load_config
from speechbs.data.loader import StepData, build_planner, iter_steps
from speechbs.data.manifest import read_manifest
from speechbs.dist import DistContext
from speechbs.tasks.ssl import SSLTask
from speechbs.rundir import environment
from speechbs.train.compile import CompiledRegions, compile_model
from speechbs.train.optim import build_optimizer, set_lr
from speechbs.train.schedule import lr_scale, peak_lr
from speechbs.train.step import precision_context, train_step

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "wav2vec2" / "tiny_builtin.toml"


@dataclass
class Contender:
    """One setting: its model, optimizer, data stream and what each of its steps took."""

    label: str
    cfg: Any
    task: Any
    optimizer: torch.optim.Optimizer
    steps: Iterator[StepData]
    compiled: CompiledRegions | None
    autocast: Any
    """The training precision's autocast factory (bf16 on a GPU, none on a CPU), as the loop's."""
    grad_scaler: torch.amp.GradScaler | None
    step_s: list[float] = field(default_factory=list)
    graphs: list[int] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)
    padded_s: list[float] = field(default_factory=list)


def make_contender(label: str, recipe: str, overrides: list[str], ctx: DistContext) -> Contender:
    cfg = load_config(recipe, overrides)
    manifest = read_manifest(cfg.data.train_manifest)
    planner = build_planner(manifest, cfg.batch, cfg.audio, cfg.run.seed,
                            num_pad_lengths=cfg.train.compile_num_lengths if cfg.train.compile else 0)
    task = SSLTask(cfg, ctx)  # seeds the initialization: every setting starts alike
    compiled = None
    if cfg.train.compile:  # cold: this setting compiles everything it runs
        import torch._functorch.config
        import torch._inductor.config

        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
        compiled = compile_model(task.model, num_lengths=len(planner.pad_lengths_L),
                                 backend=cfg.train.compile_backend)
    steps = iter_steps(planner, manifest, cfg.audio, rank=0, world_size=1, num_workers=0, targets=task.targets)
    autocast, grad_scaler = precision_context(ctx.device, cfg.train.precision)
    return Contender(label, cfg, task, build_optimizer(task.model, cfg.optim), steps, compiled, autocast, grad_scaler)


def one_step(c: Contender, step: int, ctx: DistContext) -> None:
    """What the loop does for one optimizer step, timed (the device synchronized on a GPU)."""
    data = next(c.steps)
    cfg = c.cfg
    set_lr(c.optimizer, peak_lr(cfg.optim, cfg.batch.seconds) * lr_scale(step, cfg.schedule, cfg.train.num_steps))
    ctx.seed_everything(1000 + step, same_on_all_ranks=False)
    start = time.perf_counter()
    train_step(c.task.model, c.optimizer, data.micro_batches, lambda m, mb: c.task.forward(m, mb, step=step), ctx,
               autocast=c.autocast, grad_scaler=c.grad_scaler)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    c.step_s.append(time.perf_counter() - start)
    c.graphs.append(c.compiled.num_graphs() if c.compiled is not None else 0)
    c.batch_s.append(data.stats.real_s)
    c.padded_s.append(data.stats.padded_s)


def summarize(c: Contender, warmup: int) -> dict:
    """Graphs, compile time and the steady step of one setting (see the module docstring)."""
    compiling = [k for k, g in enumerate(c.graphs) if g > (c.graphs[k - 1] if k else 0)]
    start = max(warmup, compiling[-1] + 1 if compiling else 0)
    steady = range(start, len(c.step_s)) if start < len(c.step_s) else range(len(c.step_s) - 1, len(c.step_s))
    step_s = statistics.median(c.step_s[k] for k in steady)
    return {"graphs": c.graphs[-1], "compiling_steps": len(compiling),
            "compile_s": sum(c.step_s[k] - step_s for k in compiling), "first_step_s": c.step_s[0],
            "step_s": step_s, "steps_per_s": 1.0 / step_s,
            "audio_s_per_s": statistics.median(c.batch_s[k] / c.step_s[k] for k in steady),
            "packing": sum(c.batch_s) / sum(c.padded_s), "steady_steps": len(steady)}


def add_paired_speed(table: dict[str, dict], contenders: list[Contender]) -> None:
    """Each row's speed against ``off``: the median over steady steps of off's step time over its own.

    Step k of every setting is the same global batch, run back to back, so the ratio is paired:
    a machine that is slower for a while slows both sides of it.
    """
    eager = next((c for c in contenders if c.compiled is None), None)
    for c in contenders:
        steady = range(len(c.step_s) - table[c.label]["steady_steps"], len(c.step_s))
        table[c.label]["speed_vs_off"] = (statistics.median(eager.step_s[k] / c.step_s[k] for k in steady)
                                          if eager is not None else float("nan"))


def settings_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """Row label -> the overrides that make it.

    One compiled setting per process: dynamo keeps its graphs per function, shared by every
    compiled module of a class, so a second compiled model would reuse the first one's graphs
    and its count and compile time would mean nothing.
    """
    compiled = ["train.compile=true", f'train.compile_backend="{args.backend}"',
                f"train.compile_num_lengths={args.num_lengths}"]
    return {"off" if setting == "off" else f"on, {args.num_lengths} lengths": [] if setting == "off" else compiled
            for setting in args.settings}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="pretraining recipe (its data is replaced)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per setting")
    parser.add_argument("--settings", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--num-lengths", type=int, default=16, help="train.compile_num_lengths")
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the steady step")
    parser.add_argument("--minutes", type=float, default=4.0, help="built-in corpus to train on, min")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="batch.seconds (the recipe's: 60)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a further recipe override for every setting, e.g. model.dropout=0 (repeatable)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    from speechbs.data.corpus import build_corpus

    ctx = DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp) / "audio", Path(tmp) / "manifests", minutes=args.minutes, seed=5)
        common = [f"data.train_manifest={corpus.manifests['train']}", 'data.valid_manifest=""',
                  f"run.output_dir={tmp}", f"train.num_steps={args.steps}", f"batch.seconds={args.batch_seconds}",
                  "data.num_workers=0", *args.overrides]
        contenders = [make_contender(label, args.recipe, [*common, *sets], ctx)
                      for label, sets in settings_of(args).items()]
        for step in range(args.steps):
            first = step % len(contenders)  # who goes first rotates
            for c in contenders[first:] + contenders[:first]:
                one_step(c, step, ctx)
            print(f"step {step + 1}: " + ", ".join(f"{c.label} {c.step_s[-1]:.2f} s ({c.graphs[-1]} graphs)"
                                                   for c in contenders), flush=True)
    table = {c.label: summarize(c, args.warmup) for c in contenders}
    add_paired_speed(table, contenders)
    info = environment(ctx.device)
    print(f"\n{args.steps} steps of {args.batch_seconds:g} s ({Path(args.recipe).name}) on "
          f"{args.minutes:g} min of the built-in corpus{''.join(', ' + o for o in args.overrides)}, backend "
          f"{args.backend}, settings in turn; "
          f"{info['device_name']}, {info['threads']} threads, torch {info['torch']}, {info['date']}\n")
    print_table(table)
    runs = {c.label: {"step_s": c.step_s, "graphs": c.graphs, "batch_s": c.batch_s} for c in contenders}
    result = {"steps": args.steps, "backend": args.backend, "overrides": args.overrides, "machine": info,
              "runs": runs, "rows": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def print_table(table: dict[str, dict]) -> None:
    print("| train.compile | graphs compiled | steps that compiled | compile s | first step s "
          "| steady step s | steps/s | audio-s/s | speed vs off (paired) | packing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in table.items():
        print(f"| {label} | {r['graphs']} | {r['compiling_steps']} | {r['compile_s']:.1f} | "
              f"{r['first_step_s']:.1f} | {r['step_s']:.3f} | {r['steps_per_s']:.2f} | {r['audio_s_per_s']:.1f} | "
              f"{r['speed_vs_off']:.2f}x | {r['packing']:.3f} |")


if __name__ == "__main__":
    main()
