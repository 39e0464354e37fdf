"""Cost of the gradient-noise measurement: a measuring step against a plain one.

Runs the real step engine on a speechbs wav2vec 2.0 model (random weights) with
synthetic audio: the same global batch as M micro-batches, timed with and
without a GradNoiseProbe, and reports the extra time of a measuring step and
the amortized overhead at a measurement every k steps (target: <= 5%).

Usage: python bench/grad_noise.py [--size tiny] [--micro-seconds 4] [--micro 4] [--device cpu|cuda]
       [--precision fp32|bf16] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from speechbs.dist import DistContext
from speechbs.models.registry import MODELS
from speechbs.rundir import environment
from speechbs.train.grad_noise import GradNoiseProbe
from speechbs.train.step import StepOutput, precision_context, train_step

RATE_HZ = 16_000


@dataclass
class Batch:
    wav_BT: torch.Tensor
    lengths_B: torch.Tensor
    seeds_B: torch.Tensor
    is_empty: bool = False


def make_batches(num_micro: int, micro_seconds: float, device: torch.device) -> list[Batch]:
    gen = torch.Generator().manual_seed(0)
    rows = max(int(micro_seconds // 2), 1)  # 2 s utterances
    samples = int(2 * RATE_HZ)
    return [Batch(0.1 * torch.randn(rows, samples, generator=gen).to(device),
                  torch.full((rows,), samples, device=device),
                  torch.arange(rows, device=device) + 1000 * j) for j in range(num_micro)]


def forward(model: torch.nn.Module, mb: Batch) -> StepOutput:
    out = model(mb.wav_BT, mb.lengths_B, seeds_B=mb.seeds_B, gumbel_temperature=2.0)
    return StepOutput(out.loss.loss_sum, out.loss.num_targets.float(), {})


def time_steps(model, optimizer, batches, ctx, probe: bool, repeats: int, autocast) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, optimizer, batches, forward, ctx, autocast=autocast,
                   grad_noise=GradNoiseProbe(model) if probe else None)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--micro-seconds", type=float, default=4.0, help="audio per micro-batch, s")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    ctx = DistContext(device=torch.device(args.device))
    autocast, _ = precision_context(ctx.device, args.precision)
    torch.manual_seed(0)
    cfg = MODELS["wav2vec2"].sizes[args.size](layerdrop=0.0)
    model = MODELS["wav2vec2"].model_cls(cfg).to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = make_batches(args.micro, args.micro_seconds, ctx.device)
    plain = statistics.median(time_steps(model, optimizer, batches, ctx, False, args.repeats, autocast))
    measured = statistics.median(time_steps(model, optimizer, batches, ctx, True, args.repeats, autocast))
    extra = measured / plain - 1
    rows = [{"every": k, "overhead": extra / k} for k in (1, 10, 100)]
    print(f"wav2vec2 {args.size}, {args.micro} micro-batches x {args.micro_seconds:g} s, {ctx.device} {args.precision}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"plain step {plain * 1000:.0f} ms, measuring step {measured * 1000:.0f} ms (+{extra:.1%})\n")
    print("| measure every | overhead per step | target |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['every']} | {row['overhead']:.2%} | <= 5% {'met' if row['overhead'] <= 0.05 else 'missed'} |")
    result = {"size": args.size, "device": args.device, "precision": args.precision, "micro": args.micro,
              "micro_seconds": args.micro_seconds, "plain_s": plain, "measured_s": measured, "rows": rows,
              "machine": environment(ctx.device)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
