"""Cost of the global-batch loss terms: wav2vec 2.0's diversity term and WavLM's mixing partners.

Both are measured against their per-micro-batch form in the same run:

1. Diversity (``model.diversity_scope``): optimizer steps of a recipe's wav2vec 2.0 through
   the real step engine (``train_step`` with the pretraining task's forward, and its
   ``prepare`` for ``global``). ``global`` adds one no-grad pass of the feature encoder
   and the quantizer per micro-batch (the code-usage pre-pass) and one all-reduce of
   2 G V + 1 numbers; the pre-pass is also timed inside each global step (its share of the
   same step, which machine load shifts less than a difference of two steps). The global batch is rows of
   ``--utterance-seconds`` of random audio, cut into micro-batches of at most
   ``--micro-seconds`` (default: the recipe's ``batch.seconds`` and ``max_device_seconds``).
   Medians of ``--repeats`` steps, the two scopes alternated (after one untimed step each).
2. Partners (``model.mix_scope``): the training loader (``iter_steps``, no workers, in this
   process) over synthetic WAV files, with and without the partners of ``global``
   scope: each mixed row's partner is decoded a second time. Seconds per step of loading.

Usage: python bench/global_terms.py [--recipe recipes/wav2vec2/tiny_builtin.toml]
       [--global-seconds S] [--micro-seconds S] [--utterance-seconds 5] [--repeats 5]
       [--loader-steps 20] [--mix-prob 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from speechbs.config import AudioConfig, BatchConfig
from speechbs.configio import load_config
from speechbs.data.loader import AudioBatch, build_planner, iter_steps
from speechbs.data.manifest import Manifest
from speechbs.data.partners import PartnerDraw
from speechbs.dist import DistContext
from speechbs.tasks.ssl import SSLTask
from speechbs.rundir import environment
from speechbs.train.step import precision_context, train_step

RATE_HZ = 16_000
SCOPES = ("micro_batch", "global")


def global_batch(global_s: float, micro_s: float, utterance_s: float) -> list[AudioBatch]:
    """Rows of ``utterance_s`` of fixed random audio, in as few micro-batches of <= ``micro_s`` as fit."""
    num_rows = max(1, round(global_s / utterance_s))
    rows_per_micro = max(1, int(micro_s // utterance_s))
    samples = int(utterance_s * RATE_HZ)
    wav_BT = 0.1 * torch.randn(num_rows, samples, generator=torch.Generator().manual_seed(0))
    out = []
    for rows in torch.arange(num_rows).split(rows_per_micro):
        lengths = torch.full((len(rows),), samples, dtype=torch.int64)
        out.append(AudioBatch(wav_BT[rows].contiguous(), lengths, rows.to(torch.int64), is_empty=False))
    return out


class DiversityBench:
    """One recipe's pretraining task per scope, and a timed optimizer step for each."""

    def __init__(self, recipe: str, device: str) -> None:
        self.ctx = DistContext(device=torch.device(device))
        self.tasks, self.optimizers = {}, {}
        for scope in SCOPES:
            cfg = load_config(recipe, [f'model.diversity_scope="{scope}"', 'data.valid_manifest=""'])
            if cfg.model.name != "wav2vec2":
                raise SystemExit(f"{recipe}: the diversity term is wav2vec 2.0's; give a wav2vec2 recipe")
            self.cfg = cfg
            self.tasks[scope] = SSLTask(cfg, self.ctx)
            self.optimizers[scope] = torch.optim.AdamW(self.tasks[scope].model.parameters(), lr=1e-6)
        self.autocast, _ = precision_context(self.ctx.device, self.cfg.train.precision)

    def step(self, scope: str, batches: list[AudioBatch]) -> tuple[float, float]:
        """(seconds of the whole optimizer step, seconds of its pre-pass inside it: 0 for micro_batch)."""
        task = self.tasks[scope]
        pre_pass_s = [0.0]

        def prepare(m: torch.nn.Module, mbs: list[AudioBatch]) -> Any:
            start = time.perf_counter()
            usage = task.prepare(m, mbs, step=0)
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            pre_pass_s[0] = time.perf_counter() - start
            return usage

        step_s = self._timed(lambda: train_step(task.model, self.optimizers[scope], batches,
                                                lambda m, mb, **kw: task.forward(m, mb, step=0, **kw), self.ctx,
                                                autocast=self.autocast,
                                                prepare=prepare if task.global_diversity else None))
        return step_s, pre_pass_s[0]

    def flops(self, batches: list[AudioBatch]) -> dict[str, float]:
        """Model FLOPs (``torch.utils.flop_counter``: matmuls and convolutions) of one step per scope and
        of the pre-pass: a machine-independent share, beside the timed one."""
        from torch.utils.flop_counter import FlopCounterMode

        counts = {}
        for name, fn in (("micro_batch", lambda: self.step("micro_batch", batches)),
                         ("global", lambda: self.step("global", batches)),
                         ("pre_pass", lambda: self.tasks["global"].prepare(self.tasks["global"].model, batches,
                                                                            step=0))):
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            counts[name] = float(counter.get_total_flops())
        return counts

    def _timed(self, fn) -> float:
        cuda = self.ctx.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure_diversity(bench: DiversityBench, batches: list[AudioBatch], repeats: int) -> dict[str, Any]:
    """Medians of each scope's step and of the pre-pass inside the global steps, and every raw time."""
    times: dict[str, list[float]] = {"micro_batch": [], "global": [], "pre_pass": []}
    for scope in SCOPES:  # warm-up: kernels for these shapes, AdamW's state
        bench.step(scope, batches)
    for repeat in range(repeats):
        for scope in (SCOPES if repeat % 2 == 0 else SCOPES[::-1]):
            step_s, pre_pass_s = bench.step(scope, batches)
            times[scope].append(step_s)
            if scope == "global":
                times["pre_pass"].append(pre_pass_s)
    shares = [pre / step for pre, step in zip(times["pre_pass"], times["global"])]
    return {**{name: statistics.median(values) for name, values in times.items()},
            "pre_pass_share": statistics.median(shares), "raw_s": times, "flops": bench.flops(batches)}


def synthetic_wavs(root: Path, num_files: int, seed: int = 0) -> Manifest:
    """16 kHz float WAVs of 1-10 s (noise: decoding cost does not depend on the content)."""
    rng = np.random.default_rng(seed)
    paths, counts = [], []
    for i in range(num_files):
        num_samples = int(rng.uniform(1.0, 10.0) * RATE_HZ)
        paths.append(f"u{i:04d}.wav")
        sf.write(root / paths[-1], (0.1 * rng.standard_normal(num_samples)).astype(np.float32), RATE_HZ,
                 subtype="PCM_16")
        counts.append(num_samples)
    return Manifest(root, paths, counts, [RATE_HZ] * num_files)


def measure_partners(batch_cfg: BatchConfig, mix_prob: float, num_steps: int) -> dict[str, float]:
    """Seconds per step of loading without and with the partners (alternated, medians of 3), and the
    audio decoded per step in each case (which machine load does not move)."""
    audio = AudioConfig(sample_rate_hz=RATE_HZ)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthetic_wavs(Path(tmp), num_files=max(40, math.ceil(num_steps * batch_cfg.seconds / 5)))
        times: dict[str, list[float]] = {"without": [], "with": []}
        decoded_s = {"without": 0.0, "with": 0.0}
        for repeat in range(3):
            for name in (("without", "with") if repeat % 2 == 0 else ("with", "without")):
                partners = PartnerDraw(probability=mix_prob, seed=0) if name == "with" else None
                with warnings.catch_warnings():  # a small synthetic set is off the batch target; irrelevant here
                    warnings.simplefilter("ignore")
                    planner = build_planner(manifest, batch_cfg, audio, seed=repeat)
                samples = 0
                start = time.perf_counter()
                for step in iter_steps(planner, manifest, audio, rank=0, world_size=1, num_workers=0,
                                       num_steps=num_steps, partners=partners):
                    for mb in step.micro_batches:
                        samples += int(mb.lengths_B.sum())
                        samples += 0 if mb.partner_lengths_B is None else int(mb.partner_lengths_B.sum())
                times[name].append((time.perf_counter() - start) / num_steps)
                decoded_s[name] += samples / RATE_HZ / num_steps / 3
    return {**{name: statistics.median(values) for name, values in times.items()},
            **{f"decoded_s_{name}": value for name, value in decoded_s.items()}}


def print_tables(result: dict[str, Any]) -> None:
    d = result["diversity"]
    print(f"| diversity_scope | s per step | vs micro_batch |\n|---|---|---|\n"
          f"| micro_batch | {d['micro_batch']:.3f} | (reference) |\n"
          f"| global | {d['global']:.3f} | {d['global'] / d['micro_batch'] - 1:+.1%} |\n"
          f"| (its pre-pass, timed inside the step) | {d['pre_pass']:.3f} | {d['pre_pass_share']:.1%} of the "
          f"global step |\n")
    f = d["flops"]
    print(f"| model FLOPs per step | micro_batch | global | of which the pre-pass |\n|---|---|---|---|\n"
          f"| GFLOP | {f['micro_batch'] / 1e9:.1f} | {f['global'] / 1e9:.1f} "
          f"({f['global'] / f['micro_batch'] - 1:+.1%}) | "
          f"{f['pre_pass'] / 1e9:.1f} ({f['pre_pass'] / f['global']:.1%}) |\n")
    p = result["partners"]
    print(f"| loader (mix_prob {result['mix_prob']:g}) | s per step of loading | vs without | audio decoded per "
          f"step, s | vs without |\n|---|---|---|---|---|\n"
          f"| without partners (micro_batch) | {p['without']:.4f} | (reference) | {p['decoded_s_without']:.1f} | "
          f"(reference) |\n"
          f"| with partners (global) | {p['with']:.4f} | {p['with'] / p['without'] - 1:+.1%} | "
          f"{p['decoded_s_with']:.1f} | {p['decoded_s_with'] / p['decoded_s_without'] - 1:+.1%} |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/wav2vec2/tiny_builtin.toml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--global-seconds", type=float, default=0.0, help="audio per step, s (0: the recipe's)")
    parser.add_argument("--micro-seconds", type=float, default=0.0, help="per micro-batch, s (0: the recipe's)")
    parser.add_argument("--utterance-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loader-steps", type=int, default=20)
    parser.add_argument("--mix-prob", type=float, default=0.2, help="WavLM's mix_prob for the loader part")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    bench = DiversityBench(args.recipe, args.device)
    global_s = args.global_seconds or bench.cfg.batch.seconds
    micro_s = args.micro_seconds or bench.cfg.batch.max_device_seconds
    batches = global_batch(global_s, micro_s, args.utterance_seconds)
    # The WavLM tiny recipe's loader geometry (40 s steps, 10 s cap, crops of 5 s), or smaller.
    loader_cfg = BatchConfig(seconds=min(global_s, 40.0), max_device_seconds=min(micro_s, 10.0), crop="max",
                             crop_max_seconds=min(5.0, micro_s))
    result = {"recipe": args.recipe, "global_seconds": sum(int(mb.lengths_B.sum()) for mb in batches) / RATE_HZ,
              "num_micro_batches": len(batches), "mix_prob": args.mix_prob, "repeats": args.repeats,
              "diversity": measure_diversity(bench, batches, args.repeats),
              "partners": measure_partners(loader_cfg, args.mix_prob, args.loader_steps),
              "machine": environment(args.device)}
    info = result["machine"]
    print(f"{args.recipe}: {result['global_seconds']:g} s per step in {len(batches)} micro-batches of <= "
          f"{micro_s:g} s, {bench.cfg.train.precision}, median of {args.repeats}; loader: {loader_cfg.seconds:g} s "
          f"steps, {args.loader_steps} steps; {info['device_name']}, {info['threads']} threads, "
          f"torch {info['torch']}, {info['date']}\n")
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
