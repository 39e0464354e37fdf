"""Cost of gradient accumulation: one global batch as 1 micro-batch against k = 2, 4, 8.

The same utterances (B rows of S seconds of random audio, the same seeds, so the
same masks) go through the real step engine (``speechbs.train.step.train_step``
with the pretraining task's forward) as k micro-batches of B / k rows. Two times
per configuration, alternated with the others in every repeat (rotating the
order, after one untimed step of the same shapes) so drifts in machine load hit
all alike; medians are reported:

- ``train_step``: the whole optimizer step through the engine;
- bare: the same micro-batches through a hand-written loop (zero_grad, forward,
  backward of the loss sum, AdamW step). ``train_step`` minus bare is what the
  engine adds (loss and count sums, logs, one all-reduce and host read, gradient
  normalization and norm): the part the accumulation path is responsible for.
  bare(k) / bare(1) is what smaller kernels cost on this hardware.

On CUDA the micro-batch loop also runs under ``torch.cuda.set_sync_debug_mode("warn")``
and the host syncs are counted: in the engine's loop and in the bare forward +
backward; the difference is the engine's own (target: 0). On a CPU there is no
host sync to see.

Usage: python bench/accumulation.py [--size tiny] [--global-seconds 32] [--utterance-seconds 2] [--splits 1 2 4 8]
       [--device cpu|cuda] [--precision fp32|bf16] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from speechbs.config import Config, DataConfig, ModelConfig
from speechbs.data.loader import AudioBatch
from speechbs.dist import DistContext
from speechbs.models.registry import MODELS
from speechbs.tasks.ssl import SSLTask
from speechbs.rundir import environment
from speechbs.train import step as step_module
from speechbs.train.step import precision_context, train_step

RATE_HZ = 16_000
TARGET = 0.03


def split_batch(num_rows: int, utterance_s: float, num_micro: int, device: str) -> list[AudioBatch]:
    """Rows 0..num_rows-1 (fixed audio per row) in ``num_micro`` contiguous micro-batches."""
    samples = int(utterance_s * RATE_HZ)
    wav_BT = 0.1 * torch.randn(num_rows, samples, generator=torch.Generator().manual_seed(0))
    out = []
    for rows in torch.arange(num_rows).tensor_split(num_micro):
        wav = wav_BT[rows].contiguous()
        lengths = torch.full((len(rows),), samples, dtype=torch.int64)
        if device == "cuda":  # as the training loader hands them over (pin_memory=True)
            wav, lengths = wav.pin_memory(), lengths.pin_memory()
        out.append(AudioBatch(wav, lengths, rows.to(torch.int64), is_empty=False))
    return out


class Bench:
    """The pretraining task, its optimizer and the three ways to run a step."""

    def __init__(self, size: str, device: str, precision: str) -> None:
        arch = MODELS["wav2vec2"].sizes[size](layerdrop=0.0)
        cfg = Config(model=ModelConfig(name="wav2vec2", size=size, arch=arch), data=DataConfig(valid_manifest=""))
        self.ctx = DistContext(device=torch.device(device))
        self.task = SSLTask(cfg, self.ctx)
        self.model = self.task.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.autocast, _ = precision_context(self.ctx.device, precision)

    def forward(self, model: torch.nn.Module, mb: AudioBatch) -> Any:
        return self.task.forward(model, mb, step=0)  # step 0 every time: the same masks in every run

    def engine(self, batches: list[AudioBatch]) -> None:
        train_step(self.model, self.optimizer, batches, self.forward, self.ctx, autocast=self.autocast)

    def bare_loop(self, batches: list[AudioBatch]) -> None:
        for mb in batches:
            with self.autocast() if self.autocast else contextlib.nullcontext():
                out = self.forward(self.model, mb)
            out.loss_sum.backward()

    def bare(self, batches: list[AudioBatch]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bare_loop(batches)
        self.optimizer.step()

    def engine_loop(self, batches: list[AudioBatch]) -> None:
        """The engine's micro-batch loop alone (what runs before its one host read)."""
        step_module._accumulate(self.model, batches, self.forward, self.ctx, self.autocast, None, None)

    def timed(self, fn: Callable[[list[AudioBatch]], None], batches: list[AudioBatch]) -> float:
        cuda = self.ctx.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(batches)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def count_syncs(fn: Callable[[list[AudioBatch]], None], batches: list[AudioBatch]) -> int:
    """Host syncs that CUDA's sync debug mode reports while ``fn`` runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(batches)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def measure(bench: Bench, configs: dict[int, list[AudioBatch]], repeats: int) -> dict[int, dict[str, float]]:
    times: dict[int, dict[str, list[float]]] = {k: {"step": [], "bare": []} for k in configs}
    for batches in configs.values():  # warm-up: kernels for every shape, AdamW's state
        bench.engine(batches), bench.bare(batches)
    order = list(configs)
    for repeat in range(repeats):
        shift = repeat % len(order)
        for k in order[shift:] + order[:shift]:
            # Untimed: the first step after a change of shapes pays for fresh memory (page faults on
            # CPU); without this the median picks whichever of the pair came first more often.
            bench.bare(configs[k])
            pair = [("step", bench.engine), ("bare", bench.bare)]
            for name, fn in (pair if repeat % 2 == 0 else pair[::-1]):
                times[k][name].append(bench.timed(fn, configs[k]))
    return {k: {name: statistics.median(values) for name, values in t.items()} for k, t in times.items()}


def print_table(rows: list[dict[str, Any]], syncs_checked: bool) -> None:
    print("| k micro-batches | rows x s each | train_step ms | vs k=1 | bare ms | bare vs k=1 | "
          "engine ms (step - bare) | engine % of step | target <= 3% |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "(reference)" if r["k"] == 1 else ("met" if r["overhead"] <= TARGET else "missed")
        print(f"| {r['k']} | {r['rows_per_micro']} x {r['utterance_s']:g} | {r['step_s'] * 1e3:.1f} | "
              f"{r['overhead']:+.1%} | {r['bare_s'] * 1e3:.1f} | {r['bare_overhead']:+.1%} | "
              f"{r['engine_s'] * 1e3:+.1f} | {r['engine_s'] / r['step_s']:+.1%} | {verdict} |")
    if syncs_checked:
        print("\n| k | host syncs in the engine's micro-batch loop | in bare forward + backward | engine's own |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['k']} | {r['syncs_engine_loop']} | {r['syncs_bare_loop']} | "
                  f"{r['syncs_engine_loop'] - r['syncs_bare_loop']} |")
    else:
        print("\nHost syncs in the micro-batch loop: not checkable on a CPU (run with --device cuda).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--global-seconds", type=float, default=32.0, help="audio per optimizer step, s")
    parser.add_argument("--utterance-seconds", type=float, default=2.0, help="length of each row, s")
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8], help="micro-batches per step")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    num_rows = round(args.global_seconds / args.utterance_seconds)
    if 1 not in args.splits or any(k < 1 or num_rows % k for k in args.splits):
        parser.error(f"--splits must include 1 and divide the {num_rows} rows of the global batch")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    num_rows = round(args.global_seconds / args.utterance_seconds)
    bench = Bench(args.size, args.device, args.precision)
    configs = {k: split_batch(num_rows, args.utterance_seconds, k, args.device) for k in sorted(args.splits)}
    medians = measure(bench, configs, args.repeats)
    rows = []
    for k, t in medians.items():
        rows.append({"k": k, "rows_per_micro": num_rows // k, "utterance_s": args.utterance_seconds,
                     "step_s": t["step"], "bare_s": t["bare"], "engine_s": t["step"] - t["bare"],
                     "overhead": t["step"] / medians[1]["step"] - 1,
                     "bare_overhead": t["bare"] / medians[1]["bare"] - 1})
    syncs_checked = args.device == "cuda"
    if syncs_checked:
        for row in rows:
            row["syncs_engine_loop"] = count_syncs(bench.engine_loop, configs[row["k"]])
            bench.optimizer.zero_grad(set_to_none=True)
            row["syncs_bare_loop"] = count_syncs(bench.bare_loop, configs[row["k"]])
            bench.optimizer.zero_grad(set_to_none=True)
    info = environment(args.device)
    print(f"wav2vec2 {args.size}, {args.precision}, global batch {num_rows} x {args.utterance_seconds:g} s = "
          f"{num_rows * args.utterance_seconds:g} s, median of {args.repeats}, {info['device_name']}, "
          f"{info['threads']} threads, torch {info['torch']}, {info['date']}\n")
    print_table(rows, syncs_checked)
    result = {"size": args.size, "precision": args.precision, "global_seconds": num_rows * args.utterance_seconds,
              "repeats": args.repeats, "syncs_checked": syncs_checked, "rows": rows, "machine": info}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
