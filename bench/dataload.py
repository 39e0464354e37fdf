"""Data loading throughput: decode + resample + collate, in audio seconds per second of wall time.

Everything goes through the training loader (``speechbs.data.loader``) over a
manifest: by default a temporary corpus of synthetic files (tones + noise,
16-bit, 2-16 s) in four formats: WAV and FLAC at 16 kHz, WAV at 22.05 kHz and
FLAC at 44.1 kHz (the last two are resampled by soxr on load); or ``--manifest``
for a real one. Three measurements:

1. Per format, in this process (= one worker): decode only (soundfile, whole
   file), ``load_audio`` (decode + mono + resample), and ``load_micro_batch``
   over the planner's micro-batches (+ padding into one tensor; through
   ``eval_micro_batches``, which covers every file once). Target: >= 2,000x
   real time per worker.
2. The real loader (``iter_steps``, a DataLoader over ``MicroBatchDataset``) with
   0, 1, 2 workers: real audio seconds delivered per second, and per worker.
3. Stall test: ``iter_steps`` beside a simulated training step (a sleep of fixed
   length, as the host waits for a GPU): the fraction of wall time spent
   waiting for the next batch.

Usage: python bench/dataload.py [--manifest PATH] [--files-per-format 24] [--workers 0 1 2]
       [--batch-seconds 60] [--max-device-seconds 30] [--steps 20] [--step-ms 200 100 50]
       [--stall-workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechbs.config import AudioConfig, BatchConfig
from speechbs.data.audio import load_audio
from speechbs.data.loader import build_planner, eval_micro_batches, iter_steps
from speechbs.data.manifest import Manifest, read_manifest
from speechbs.rundir import environment

FORMATS = (("wav", 16_000), ("flac", 16_000), ("wav", 22_050), ("flac", 44_100))
TARGET_X = 2_000.0


def synthetic_corpus(root: Path, files_per_format: int, seed: int = 0) -> Manifest:
    """Speech-like test files: a few drifting harmonics under amplitude modulation, plus noise."""
    rng = np.random.default_rng(seed)
    paths, counts, rates = [], [], []
    for ext, rate in FORMATS:
        folder = root / f"{ext}_{rate}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files_per_format):
            num_samples = int(rng.uniform(2.0, 16.0) * rate)
            t = np.arange(num_samples) / rate
            pitch_hz = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
            phase = 2 * np.pi * np.cumsum(pitch_hz) / rate
            voice = sum(np.sin(h * phase) / h for h in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            wav = 0.1 * voice + 0.01 * rng.standard_normal(num_samples)
            name = f"{ext}_{rate}/{i:03d}.{ext}"
            sf.write(str(root / name), wav.astype(np.float32), rate, subtype="PCM_16")
            paths.append(name), counts.append(num_samples), rates.append(rate)
    return Manifest(root, paths, counts, rates)


def format_groups(manifest: Manifest, model_rate_hz: int) -> dict[str, np.ndarray]:
    """Row indices by (extension, rate), e.g. ``flac 44100 Hz``."""
    rates = manifest.rates_hz(model_rate_hz)
    keys = [f"{Path(p).suffix.lstrip('.').lower()} {r} Hz" for p, r in zip(manifest.paths, rates)]
    return {key: np.flatnonzero(np.asarray(keys) == key) for key in sorted(set(keys))}


def per_format(manifest: Manifest, audio_cfg: AudioConfig, batch_cfg: BatchConfig) -> list[dict[str, Any]]:
    """Decode-only, load_audio and load_micro_batch throughput of each format, in this process."""
    rows = []
    for key, indices in format_groups(manifest, audio_cfg.sample_rate_hz).items():
        part = manifest.subset(indices)
        audio_s = float(part.seconds(audio_cfg.sample_rate_hz).sum())
        start = time.perf_counter()
        for i in range(len(part)):
            sf.read(str(part.audio_path(i)), dtype="float32")
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(len(part)):
            load_audio(part.audio_path(i), audio_cfg)
        load_s = time.perf_counter() - start
        # Every file once, packed under the micro-batch cap (the evaluation path: load_micro_batch on
        # the planner's micro-batches of one global batch), whatever the size of this format's share.
        start = time.perf_counter()
        num_samples = sum(int(mb.lengths_B.sum()) for mb in eval_micro_batches(
            part, batch_cfg, audio_cfg, rank=0, world_size=1))
        collate_s = time.perf_counter() - start
        real_s = num_samples / audio_cfg.sample_rate_hz
        rows.append({"format": key, "num_files": len(part), "audio_s": audio_s, "decode_x": audio_s / decode_s,
                     "load_audio_x": audio_s / load_s, "micro_batch_x": real_s / collate_s})
    return rows


def loader_rate(manifest: Manifest, audio_cfg: AudioConfig, batch_cfg: BatchConfig, num_workers: int,
                num_steps: int, step_s: float = 0.0) -> dict[str, float]:
    """Real audio seconds per second through ``iter_steps``, and the time spent waiting for it.

    The first step is not timed (workers start, the prefetch queue fills).
    ``step_s`` > 0 sleeps after each step, as the host does while a GPU computes.
    """
    planner = build_planner(manifest, batch_cfg, audio_cfg, seed=0)
    steps = iter_steps(planner, manifest, audio_cfg, rank=0, world_size=1, num_workers=num_workers)
    try:
        next(steps)
        waits_s, real_s = [], 0.0
        start = time.perf_counter()
        for _ in range(num_steps):
            before = time.perf_counter()
            data = next(steps)
            waits_s.append(time.perf_counter() - before)
            real_s += data.stats.real_s
            if step_s > 0:
                time.sleep(step_s)
        wall_s = time.perf_counter() - start
    finally:
        steps.close()  # stops the DataLoader's workers
    return {"real_s": real_s, "wall_s": wall_s, "waited_s": sum(waits_s), "x": real_s / wall_s,
            "wait_fraction": sum(waits_s) / wall_s, "wait_ms_mean": 1e3 * sum(waits_s) / len(waits_s),
            "wait_ms_min": 1e3 * min(waits_s)}


def print_tables(result: dict[str, Any], args: argparse.Namespace) -> None:
    print("| format | files | audio s | decode only x RT | load_audio (+ resample) x RT | "
          "load_micro_batch (+ collate) x RT | target >= 2,000x |")
    print("|---|---|---|---|---|---|---|")
    for r in result["formats"]:
        verdict = "met" if r["micro_batch_x"] >= TARGET_X else "missed"
        print(f"| {r['format']} | {r['num_files']} | {r['audio_s']:.0f} | {r['decode_x']:,.0f} | "
              f"{r['load_audio_x']:,.0f} | {r['micro_batch_x']:,.0f} | {verdict} |")
    print("\n| num_workers | audio s delivered | x real time | per worker x RT | target >= 2,000x per worker |")
    print("|---|---|---|---|---|")
    for r in result["loader"]:
        per = r["x"] / max(r["num_workers"], 1)
        print(f"| {r['num_workers']} | {r['real_s']:.0f} | {r['x']:,.0f} | {per:,.0f} | "
              f"{'met' if per >= TARGET_X else 'missed'} |")
    print(f"\nStall test: {args.stall_workers} workers, {args.steps} steps of {args.batch_seconds:g} s "
          f"beside a sleep standing in for the training step.\n")
    print("| simulated step ms | model consumes x RT | x real time delivered | waiting for data | "
          "wait per step, mean ms | wait per step, min ms |")
    print("|---|---|---|---|---|---|")
    for r in result["stall"]:
        print(f"| {r['step_ms']:g} | {args.batch_seconds / (r['step_ms'] / 1000):,.0f} | {r['x']:,.0f} | "
              f"{r['wait_fraction']:.1%} | {r['wait_ms_mean']:.1f} | {r['wait_ms_min']:.1f} |")
    print("\nThe smallest wait is the cost of handing a ready step over from the workers (IPC); "
          "what the mean adds above it is stalling.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="", help="fairseq .tsv (default: a temporary synthetic corpus)")
    parser.add_argument("--files-per-format", type=int, default=24, help="synthetic corpus: files per format")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers to try")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="audio per step, s (batch.seconds)")
    parser.add_argument("--max-device-seconds", type=float, default=30.0, help="padded audio per micro-batch, s")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loader measurement")
    parser.add_argument("--step-ms", type=float, nargs="*", default=[200.0, 100.0, 50.0],
                        help="stall test: simulated training step lengths, ms (none: skip the test)")
    parser.add_argument("--stall-workers", type=int, default=2, help="stall test: workers (data.num_workers)")
    parser.add_argument("--json", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Small (per-format) manifests make the planner warn about uneven epochs; that is not measured here.
    warnings.filterwarnings("ignore", message=r"batch\.seconds = .* steps per epoch", category=UserWarning)
    audio_cfg = AudioConfig()
    batch_cfg = BatchConfig(seconds=args.batch_seconds, max_device_seconds=args.max_device_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(args.manifest) if args.manifest else synthetic_corpus(
            Path(tmp), args.files_per_format)
        result: dict[str, Any] = {
            "manifest": args.manifest or "synthetic", "batch_seconds": args.batch_seconds,
            "max_device_seconds": args.max_device_seconds, "machine": {**environment("cpu"), "soundfile": sf.__version__},
            "formats": per_format(manifest, audio_cfg, batch_cfg),
            "loader": [{"num_workers": w, **loader_rate(manifest, audio_cfg, batch_cfg, w, args.steps)}
                       for w in args.workers],
            "stall": [{"step_ms": ms, **loader_rate(manifest, audio_cfg, batch_cfg, args.stall_workers,
                                                    args.steps, ms / 1000)} for ms in args.step_ms]}
    info = result["machine"]
    print(f"manifest: {result['manifest']} ({len(manifest)} files, "
          f"{manifest.seconds(audio_cfg.sample_rate_hz).sum():.0f} s), batches of {args.batch_seconds:g} s, "
          f"micro-batches <= {args.max_device_seconds:g} s, {info['device_name']}, {info['cpu_count']} CPUs, "
          f"torch {info['torch']}, soundfile {info['soundfile']}, {info['date']}\n")
    print_tables(result, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
