"""Packing benchmark: the planner against random batching and fairseq-style crop-to-shortest.

For the seed study's batch sizes (Vaessen & van Leeuwen 2024: 87.5 s ... 80 min) it
reports, per optimizer step: packing efficiency (real / padded audio computed),
realized real seconds against the target (mean signed, mean absolute and max
relative error) and audio discarded, on a LibriSpeech-960-like length
distribution (281,241 utterances) and on the shared recordings when present.

Baselines, both with the seed study's "nominal batch = GPUs x max_tokens" rule
(a step is round(target / cap) micro-batches, padding counted in the batch):
  random:   shuffle, fill each micro-batch in order up to the cap, pad.
  fairseq:  sort by length, fill to the cap on lengths cropped to 250k samples,
            crop every micro-batch to its shortest (what is cut is discarded).

Usage: python bench/packing.py --out packing.json [--steps 400] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from speechbs.config import BatchConfig
from speechbs.data.batching import BatchPlanner, BatchStats

RATE = 16_000
BATCHES_S = [87.5, 150.0, 300.0, 600.0, 1200.0, 2400.0, 4800.0]
FAIRSEQ_CROP = 250_000


def librispeech_like(num_utts: int = 281_241, seed: int = 0) -> np.ndarray:
    """Lengths (samples at 16 kHz) from the measured percentiles of LibriSpeech train.

    Percentiles 0..95 are the measured ones (research/librispeech-lengths.md); the
    tail above the sample's 17.2 s maximum up to the ~35 s segmentation cap is an
    assumption (0.5% above 17.5 s, 0.01% above 24 s), there to exercise the cap.
    """
    quantiles = [0, .05, .10, .25, .5, .75, .9, .95, .995, .9999, 1.0]
    seconds = [1.6, 3.7, 5.3, 11.3, 14.1, 15.1, 15.8, 16.3, 17.5, 24.0, 35.0]
    u = np.random.default_rng(seed).random(num_utts)
    return (np.interp(u, quantiles, seconds) * RATE).astype(np.int64)


def shared_lengths(root: Path) -> dict[str, np.ndarray]:
    """Lengths at 16 kHz of the shared corpora (from their manifest.tsv; absent ones are skipped)."""
    out = {}
    for name in ("free_spoken_digit", "yesno", "ljspeech_sample"):
        path = root / name / "manifest.tsv"
        if path.is_file():
            with path.open() as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            n = np.array([int(r["num_samples"]) for r in rows]) * RATE / np.array([int(r["sample_rate"]) for r in rows])
            out[name] = np.floor(n + 0.5).astype(np.int64)
    return out


def relative_errors(real: np.ndarray, target: float) -> dict[str, float]:
    err = (real - target) / target
    return {"err_mean": float(err.mean()), "err_abs_mean": float(np.abs(err).mean()),
            "err_abs_max": float(np.abs(err).max())}


def planner_row(lengths: np.ndarray, seconds: float, cap: float, num_steps: int) -> dict:
    cfg = BatchConfig(seconds=seconds, max_device_seconds=cap)
    start = time.perf_counter()
    planner = BatchPlanner(lengths, cfg, sample_rate_hz=RATE, seed=1)
    real = planner.real_samples_per_unit(0)
    plan_s = time.perf_counter() - start
    real_total = padded_total = 0
    micro = []
    for step in range(min(num_steps, planner.steps_per_epoch)):
        batch = planner.batch_at(0, step)
        stats = BatchStats.from_split(batch, planner.split(batch, 1), RATE)
        real_total += stats.real_s
        padded_total += stats.padded_s
        micro.append(stats.num_micro_batches)
    return {"efficiency": real_total / padded_total, "discarded": 0.0, "plan_epoch_s": plan_s,
            "steps_per_epoch": planner.steps_per_epoch, "micro_per_step": float(np.mean(micro)),
            **relative_errors(real / RATE, seconds)}


def fill_to_cap(lengths: np.ndarray, cap_samples: float) -> list[tuple[int, int]]:
    """Contiguous micro-batches in the given order, each len * longest <= cap."""
    bins, start, longest = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        longest_if = max(longest, n)
        if i > start and (i - start + 1) * longest_if > cap_samples:
            bins.append((start, i))
            start, longest_if = i, n
        longest = longest_if
    bins.append((start, len(lengths)))
    return bins


def nominal_steps(real_per_micro: np.ndarray, seconds: float, cap: float) -> np.ndarray:
    per_step = max(1, round(seconds / cap))
    usable = len(real_per_micro) // per_step * per_step
    return real_per_micro[:usable].reshape(-1, per_step).sum(axis=1)


def random_row(lengths: np.ndarray, seconds: float, cap: float, rng: np.random.Generator) -> dict:
    shuffled = lengths[rng.permutation(len(lengths))]
    bins = fill_to_cap(shuffled, cap * RATE)
    real = np.array([shuffled[a:b].sum() for a, b in bins], dtype=np.float64)
    padded = np.array([(b - a) * shuffled[a:b].max() for a, b in bins], dtype=np.float64)
    return {"efficiency": real.sum() / padded.sum(), "discarded": 0.0,
            **relative_errors(nominal_steps(real, seconds, cap) / RATE, seconds)}


def fairseq_row(lengths: np.ndarray, seconds: float, cap: float, rng: np.random.Generator) -> dict:
    # fairseq orders by (size, random) and batches by max_tokens on sizes capped at max_sample_size.
    capped = np.minimum(lengths, FAIRSEQ_CROP)
    order = np.lexsort((rng.random(len(lengths)), capped))[::-1]
    capped = capped[order]
    bins = fill_to_cap(capped, cap * RATE)
    used = np.array([(b - a) * capped[a:b].min() for a, b in bins], dtype=np.float64)
    return {"efficiency": 1.0, "discarded": 1.0 - used.sum() / lengths.sum(),
            **relative_errors(nominal_steps(used, seconds, cap) / RATE, seconds)}


def configs(total_s: float) -> list[tuple[float, float]]:
    out = [(s, 87.5) for s in BATCHES_S] + [(s, 150.0) for s in BATCHES_S if s >= 150.0]
    return [(s, cap) for s, cap in out if s <= total_s]


def run(corpora: dict[str, np.ndarray], num_steps: int) -> list[dict]:
    rows = []
    for name, lengths in corpora.items():
        for seconds, cap in configs(lengths.sum() / RATE):
            rng = np.random.default_rng(0)
            rows.append({"corpus": name, "batch_s": seconds, "cap_s": cap,
                         "planner": planner_row(lengths, seconds, cap, num_steps),
                         "random": random_row(lengths, seconds, cap, rng),
                         "fairseq": fairseq_row(lengths, seconds, cap, rng)})
    return rows


def markdown(rows: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["| corpus | batch | cap | planner eff % | err mean % | err abs mean % | err abs max % | "
             "micro/step | random eff % | random err mean % | fairseq discarded % | fairseq err mean % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, rnd, fs = r["planner"], r["random"], r["fairseq"]
        batch = f"{r['batch_s']:g} s" if r["batch_s"] < 300 else f"{r['batch_s'] / 60:g} min"
        lines.append(f"| {r['corpus']} | {batch} | {r['cap_s']:g} s | {pct(p['efficiency'])} | "
                     f"{pct(p['err_mean'])} | {pct(p['err_abs_mean'])} | {pct(p['err_abs_max'])} | "
                     f"{p['micro_per_step']:.1f} | {pct(rnd['efficiency'])} | {pct(rnd['err_mean'])} | "
                     f"{pct(fs['discarded'])} | {pct(fs['err_mean'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--steps", type=int, default=400,
                        help="steps of epoch 0 that are split for packing efficiency (errors use the whole epoch)")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                        help="folder with the shared corpora (skipped when absent)")
    args = parser.parse_args()
    # Tiny corpora hold few steps per epoch; the planner's warning about that is in the table's errors.
    warnings.simplefilter("ignore", UserWarning)
    start = time.perf_counter()
    corpora = {"librispeech-like (281k)": librispeech_like(), **shared_lengths(Path(args.shared))}
    rows = run(corpora, args.steps)
    elapsed = time.perf_counter() - start
    print(markdown(rows))
    print(f"\n{elapsed:.1f} s on {platform.processor() or platform.machine()}")
    Path(args.out).write_text(json.dumps({"rows": rows, "seconds": elapsed, "steps_split": args.steps}, indent=1))


if __name__ == "__main__":
    main()
