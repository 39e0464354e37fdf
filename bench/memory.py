"""Peak memory of one wav2vec 2.0 pretraining step against micro-batch seconds.

One optimizer step (forward + backward + AdamW) through the real step engine
(``speechbs.train.step.train_step``) with the pretraining task's own forward
(``speechbs.tasks.ssl.SSLTask``: per-utterance seeds, Gumbel
temperature, log sums), on ONE micro-batch of B utterances padded to S seconds
(random audio; real lengths spread over the top ``--spread`` of S, as in one
length bucket of the planner). Layer drop is off so every layer is held (the
worst case the memory cap must cover); dropout is the size's default.

- CUDA: ``torch.cuda.max_memory_allocated`` around the step (peak reset per
  point; AdamW's state is allocated by a warm-up step first). ``--find-max``
  doubles the micro-batch until it runs out of memory, then bisects, and reports
  the largest micro-batch that fits: the ``batch.max_device_seconds`` to use.
- CPU: each point runs in a fresh process (``ru_maxrss`` only grows); the peak
  resident size of the step minus the one measured after a 1 s warm-up step.

Legend: B = utterances in the micro-batch, T = samples of its longest row.

Usage: python bench/memory.py [--size tiny] [--micro-seconds 5 10 20 40 80] [--utterance-seconds 5]
       [--device cpu|cuda] [--precision fp32|bf16] [--find-max] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

from speechbs.config import Config, DataConfig, ModelConfig
from speechbs.data.loader import AudioBatch
from speechbs.dist import DistContext
from speechbs.models.registry import MODELS
from speechbs.tasks.ssl import SSLTask
from speechbs.rundir import environment
from speechbs.train.step import precision_context, train_step

RATE_HZ = 16_000
MB = 2 ** 20


def build_task(size: str, device: str) -> tuple[SSLTask, DistContext]:
    """The pretraining task as ``speechbs pretrain`` builds it (wav2vec 2.0, no validation set)."""
    arch = MODELS["wav2vec2"].sizes[size](layerdrop=0.0)
    cfg = Config(model=ModelConfig(name="wav2vec2", size=size, arch=arch), data=DataConfig(valid_manifest=""))
    ctx = DistContext(device=torch.device(device))
    return SSLTask(cfg, ctx), ctx


def micro_batch(padded_s: float, utterance_s: float, spread: float, first_index: int = 0,
                pin: bool = False) -> AudioBatch:
    """B = padded_s / utterance_s rows padded to utterance_s; real lengths from (1 - spread) * S to S."""
    num_rows = max(round(padded_s / utterance_s), 1)
    width = int(min(utterance_s, padded_s) * RATE_HZ)
    lengths_B = torch.linspace(width * (1 - spread), width, num_rows).round().to(torch.int64)
    gen = torch.Generator().manual_seed(first_index)
    wav_BT = 0.1 * torch.randn(num_rows, width, generator=gen)
    wav_BT *= torch.arange(width).view(1, -1) < lengths_B.view(-1, 1)
    indices_B = torch.arange(num_rows, dtype=torch.int64) + first_index
    if pin:  # as the training loader hands them over on a GPU (pin_memory=True)
        wav_BT, lengths_B = wav_BT.pin_memory(), lengths_B.pin_memory()
    return AudioBatch(wav_BT, lengths_B, indices_B, is_empty=False)


class Stepper:
    """A model, its optimizer and precision: runs one training step on a micro-batch."""

    def __init__(self, size: str, device: str, precision: str) -> None:
        self.task, self.ctx = build_task(size, device)
        self.optimizer = torch.optim.AdamW(self.task.model.parameters(), lr=1e-5)
        self.autocast, self.scaler = precision_context(self.ctx.device, precision)
        self.num_params = sum(p.numel() for p in self.task.model.parameters())

    def step(self, batches: list[AudioBatch]) -> float:
        """One optimizer step; returns its wall time, s."""
        cuda = self.ctx.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(self.task.model, self.optimizer, batches, lambda m, mb: self.task.forward(m, mb, step=0),
                   self.ctx, autocast=self.autocast, grad_scaler=self.scaler)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: kB


def cpu_point(size: str, padded_s: float, utterance_s: float, spread: float, precision: str) -> dict[str, float]:
    """Run in a fresh process: peak RSS of one step minus the peak after a 1 s warm-up step."""
    stepper = Stepper(size, "cpu", precision)
    stepper.step([micro_batch(1.0, 1.0, 0.0)])  # allocates gradients and AdamW's state
    baseline_mb = _rss_mb()
    batch = micro_batch(padded_s, utterance_s, spread)
    step_s = min(stepper.step([batch]) for _ in range(2))  # the first pays one-time kernel setup
    peak_mb = _rss_mb()
    return {"baseline_mb": baseline_mb, "peak_mb": peak_mb, "growth_mb": peak_mb - baseline_mb, "step_s": step_s}


def cuda_point(stepper: Stepper, padded_s: float, utterance_s: float, spread: float) -> dict[str, float] | None:
    """Peak allocated bytes of one step; None when it ran out of memory."""
    batch = micro_batch(padded_s, utterance_s, spread, pin=True)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before_mb = torch.cuda.memory_allocated() / MB
    out_of_memory = False
    try:
        step_s = min(stepper.step([batch]) for _ in range(2))  # the first pays one-time kernel setup
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate a workspace
        if not isinstance(err, torch.cuda.OutOfMemoryError) and not any(
                text in str(err) for text in ("out of memory", "ALLOC_FAILED")):
            raise
        out_of_memory = True  # free outside the handler: the traceback holds the activations
    if out_of_memory:
        stepper.optimizer.zero_grad(set_to_none=True)
        del batch
        gc.collect()
        torch.cuda.empty_cache()
        return None
    peak_mb = torch.cuda.max_memory_allocated() / MB
    return {"baseline_mb": before_mb, "peak_mb": peak_mb, "growth_mb": peak_mb - before_mb, "step_s": step_s}


def find_max(stepper: Stepper, args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    """Double from ``--find-start`` until out of memory, then bisect to ``--resolution`` seconds."""
    tried: list[dict[str, Any]] = []

    def fits(padded_s: float) -> bool:
        result = cuda_point(stepper, padded_s, args.utterance_seconds, args.spread)
        tried.append({"padded_s": padded_s, "fits": result is not None, **(result or {})})
        print(f"  {padded_s:g} s: {'fits' if result else 'out of memory'}", flush=True)
        return result is not None

    low, high = 0.0, args.find_start
    while high <= args.find_limit and fits(high):
        low, high = high, 2 * high
    if high > args.find_limit:
        return low, tried
    while high - low > args.resolution:
        middle = round((low + high) / 2 / args.utterance_seconds) * args.utterance_seconds
        if middle in (low, high):
            break
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, tried


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    if args.device == "cuda":
        stepper = Stepper(args.size, "cuda", args.precision)
        stepper.step([micro_batch(1.0, 1.0, 0.0, pin=True)])
    for padded_s in args.micro_seconds:
        points = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                points.append(cuda_point(stepper, padded_s, args.utterance_seconds, args.spread))
            else:
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    points.append(pool.submit(cpu_point, args.size, padded_s, args.utterance_seconds,
                                              args.spread, args.precision).result())
        ok = [p for p in points if p is not None]
        batch = micro_batch(padded_s, args.utterance_seconds, args.spread)
        real_s = float(batch.lengths_B.sum()) / RATE_HZ
        padded = batch.wav_BT.numel() / RATE_HZ
        row: dict[str, Any] = {"micro_s": padded_s, "rows": len(batch.lengths_B), "real_s": real_s,
                               "padded_s": padded, "fits": bool(ok)}
        if ok:
            row.update({key: min(p[key] for p in ok) for key in ("baseline_mb", "peak_mb", "growth_mb", "step_s")})
            row["mb_per_padded_s"] = row["growth_mb"] / padded
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    what = "peak allocated (CUDA)" if args.device == "cuda" else "peak RSS of a fresh process"
    print("| micro-batch s | B x S | real s | padded s | peak MB | step growth MB | MB per padded s | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        shape = f"{r['rows']} x {min(args.utterance_seconds, r['micro_s']):g} s"
        if not r["fits"]:
            print(f"| {r['micro_s']:g} | {shape} | {r['real_s']:.1f} | {r['padded_s']:.1f} | out of memory | | | |")
            continue
        print(f"| {r['micro_s']:g} | {shape} | {r['real_s']:.1f} | {r['padded_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['growth_mb']:.0f} | {r['mb_per_padded_s']:.1f} | {r['step_s']:.2f} |")
    print(f"\npeak MB: {what}; step growth: peak minus the memory held before the step "
          f"(weights, gradients and AdamW state); step s: the faster of two steps of that size.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--micro-seconds", type=float, nargs="+", default=[5, 10, 20, 40, 80],
                        help="padded audio per micro-batch, s")
    parser.add_argument("--utterance-seconds", type=float, default=5.0, help="padded length of each row, s")
    parser.add_argument("--spread", type=float, default=0.1, help="real lengths span the top fraction of a row")
    parser.add_argument("--repeats", type=int, default=1, help="runs per point (the smallest peak is kept)")
    parser.add_argument("--find-max", action="store_true", help="CUDA: find the largest micro-batch that fits")
    parser.add_argument("--find-start", type=float, default=80.0, help="--find-max: first micro-batch, s")
    parser.add_argument("--find-limit", type=float, default=20_480.0, help="--find-max: stop doubling here, s")
    parser.add_argument("--resolution", type=float, default=10.0, help="--find-max: bisect to this, s")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.find_max and args.device != "cuda":
        parser.error("--find-max needs --device cuda (on a CPU, RAM is not what limits the micro-batch)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    info = environment(args.device)
    result: dict[str, Any] = {"size": args.size, "precision": args.precision,
                              "utterance_seconds": args.utterance_seconds, "machine": info}
    if args.find_max:
        stepper = Stepper(args.size, "cuda", args.precision)
        stepper.step([micro_batch(1.0, 1.0, 0.0, pin=True)])
        total_mb = torch.cuda.get_device_properties(0).total_memory / MB
        print(f"wav2vec2 {args.size}, {args.precision}, rows of {args.utterance_seconds:g} s, "
              f"{info['device_name']} ({total_mb:.0f} MB)")
        largest_s, tried = find_max(stepper, args)
        result.update({"largest_micro_s": largest_s, "total_mb": total_mb, "tried": tried})
        print(f"\nlargest micro-batch that fits: {largest_s:g} s (target >= 600 s for BASE on 80 GB: "
              f"{'met' if largest_s >= 600 else 'missed'})")
    else:
        rows = measure(args)
        params = Stepper(args.size, "cpu", "fp32").num_params if args.device == "cpu" else None
        print(f"wav2vec2 {args.size}{f' ({params:,} parameters)' if params else ''}, {args.precision}, "
              f"one micro-batch per step, {info['device_name']}, {info['threads']} threads, "
              f"torch {info['torch']}, {info['date']}\n")
        print_table(rows, args)
        result["rows"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
