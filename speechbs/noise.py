"""``speechbs noise CHECKPOINT --manifest M --batch-seconds 15,30,60,120 --repeats 10 --out DIR``.

Gradient noise of one pretraining checkpoint at several batch sizes, at a fixed
model state: the weights are loaded and never move (the step engine at LR 0),
and each batch size gets ``--repeats`` independent global batches of the
manifest (consecutive batches of one epoch of the batch plan: disjoint
utterances), with the checkpoint's own masking, dropout, precision and
micro-batch cap. What is estimated from them, and how the intervals are made,
is in :mod:`speechbs.train.fixed_noise`. Under torchrun each global batch is
split over the ranks exactly as in training; rank 0 writes ``noise.json`` and
``noise.png``. Works for every pretraining family (wav2vec 2.0, HuBERT, WavLM;
HuBERT and WavLM read the manifest's cluster labels, as training does).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from speechbs import seeds
from speechbs.atomic import write_text
from speechbs.configio import toml_str
from speechbs.data.loader import build_planner, iter_steps
from speechbs.data.manifest import read_manifest
from speechbs.dist import DistContext, distributed
from speechbs.errors import ConfigError, DataError, PlanError
from speechbs.pretrained import read_checkpoint

EXPECTED_STD_PER_DOUBLING = 2**-0.5
"""At a fixed state the std of a batch-mean gradient falls by this factor per doubling of the batch."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="pretraining checkpoint file, or a run directory (its latest checkpoint)")
    parser.add_argument("--manifest", required=True, help="manifest to draw the batches from (.tsv)")
    parser.add_argument("--batch-seconds", default="15,30,60,120",
                        help="comma-separated batch sizes, s of audio per step over all devices (default 15,30,60,120)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="independent batches per batch size (default 10; 20 or more for B_simple's interval)")
    parser.add_argument("--out", required=True, help="output directory for noise.json and noise.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch plan and of the dropout draws")
    parser.add_argument("--bootstrap", type=int, default=2_000, help="bootstrap resamples per interval")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the checkpoint's config, e.g. --set batch.max_device_seconds=30")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                        help="process-group backend under torchrun")


def parse_batches(text: str) -> list[float]:
    try:
        batches = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--batch-seconds {text!r}: give numbers separated by commas, e.g. 15,30,60,120") from None
    if not batches or any(not (b > 0 and math.isfinite(b)) for b in batches):
        raise ConfigError(f"--batch-seconds {text!r}: every batch size must be a positive number of seconds")
    if len(set(batches)) != len(batches):
        raise ConfigError(f"--batch-seconds {text!r}: a batch size is repeated")
    return sorted(batches)


def main(args: argparse.Namespace) -> int:
    from speechbs.tasks.ssl import SSLTask
    from speechbs.train.fixed_noise import measure_gradients, std_per_doubling, summarize
    from speechbs.train.step import precision_context

    batches = parse_batches(args.batch_seconds)
    if args.repeats < 2:
        raise ConfigError(f"--repeats {args.repeats}: the std over batches needs at least 2 (10 or more is useful)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for noise.json and noise.png")
    manifest = read_manifest(args.manifest)
    sets = [f"data.train_manifest={toml_str(args.manifest)}", 'data.valid_manifest=""', *args.overrides]
    saved = read_checkpoint(args.checkpoint, overrides=sets)
    path, ckpt, cfg = saved.path, saved.checkpoint, saved.config
    step = int(ckpt.get("step", 0))

    with distributed(args.backend) as ctx:
        task = SSLTask(cfg, ctx)
        try:
            task.model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise DataError(f"checkpoint {path}: its weights are not those of a {cfg.model.name} pretraining model "
                            f"(a fine-tuned CTC checkpoint? give the pretraining run's checkpoint)") from None
        model = ctx.wrap_model(task.model, find_unused_parameters=task.find_unused_parameters)
        autocast, _ = precision_context(ctx.device, cfg.train.precision)
        entries, measured = [], []
        for batch_s in batches:
            try:
                planner = build_planner(manifest, cfg.batch.constant(batch_s), cfg.audio, seed=args.seed)
            except PlanError as exc:
                raise PlanError(f"--batch-seconds {batch_s:g} on {args.manifest}: {exc} (batch.* settings "
                                f"take --set)") from None
            if planner.steps_per_epoch < args.repeats:
                raise ConfigError(
                    f"--manifest {args.manifest} holds {planner.steps_per_epoch} disjoint batches of {batch_s:g} s, "
                    f"fewer than --repeats {args.repeats}: lower --repeats or the largest --batch-seconds, or use a "
                    f"larger manifest (repeats must be independent batches)")
            steps = iter_steps(planner, manifest, cfg.audio, rank=ctx.rank, world_size=ctx.world_size,
                               num_workers=cfg.data.num_workers, targets=task.targets, partners=task.partners,
                               num_steps=args.repeats, pin_memory=ctx.device.type == "cuda")
            result = measure_gradients(
                model, (data.micro_batches for data in steps),
                lambda m, mb, **kw: task.forward(m, mb, step=step, **kw), ctx, batch_s=batch_s, autocast=autocast,
                prepare=lambda m, mbs: task.prepare(m, mbs, step=step),
                before_batch=lambda r, b=batch_s: ctx.seed_everything(seeds.noise_repeat_seed(args.seed, b, r),
                                                                      same_on_all_ranks=False))
            if ctx.is_main:
                entry = summarize(result, seed=args.seed, num_bootstrap=args.bootstrap)
                entries.append(entry)
                measured.append(result)
                print(f"batch {batch_s:g} s: grad std {entry.grad_std:.4g} [{entry.grad_std_ci[0]:.4g}, "
                      f"{entry.grad_std_ci[1]:.4g}], B_simple {entry.b_simple_s:.4g} s [{entry.b_simple_s_ci[0]:.4g}, "
                      f"{entry.b_simple_s_ci[1]:.4g}], {entry.repeats} repeats", flush=True)
        if ctx.is_main:
            factor, interval = std_per_doubling(entries, measured, seed=args.seed, num_bootstrap=args.bootstrap)
            record = {
                "checkpoint": str(path), "model": cfg.model.name, "step": step,
                "hours_seen": float(ckpt.get("hours_seen", math.nan)), "manifest": str(args.manifest),
                "repeats": args.repeats, "seed": args.seed, "world_size": ctx.world_size,
                "interval": "95% expanded percentile bootstrap over the repeats (Hesterberg 2015)",
                "batches": [entry.to_json() for entry in entries],
                "std_per_doubling": factor, "std_per_doubling_ci": list(interval),
                "std_per_doubling_expected": EXPECTED_STD_PER_DOUBLING,
            }
            write_outputs(record, out)
            print(f"grad std per doubling of the batch: {factor:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] "
                  f"(1/sqrt(2) = {EXPECTED_STD_PER_DOUBLING:.3f} at a fixed state); wrote {out / 'noise.json'}")
        ctx.barrier()
    return 0


def write_outputs(record: dict[str, Any], out: Path) -> None:
    """``noise.json`` (strict JSON: a non-finite number is null) and ``noise.png``."""
    from speechbs.report.plots import write_noise_plot

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "noise.json", json.dumps(_finite_or_null(record), indent=2, allow_nan=False) + "\n")
    write_noise_plot(record, out / "noise.png")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value
