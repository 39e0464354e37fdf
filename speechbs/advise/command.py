"""``speechbs advise RECIPE --gpus N --device-memory-gb X [--budget-hours H]``: which batch to train with.

1. A probe run: the recipe's first ``--probe-steps`` steps (its own LR schedule and batch, every step
   measuring gradient noise) in ``OUT/probe``, an ordinary run directory (run again, it is reused).
2. The noise scale B_noise: B_simple = mean tr(Sigma) / mean |mu|^2 over the measurements of the
   probe's second half, in seconds of audio, with a bootstrap interval.
3. The trade-off (:mod:`speechbs.advise.tradeoff`): the probe reached its loss in S0 steps of B0, which
   fixes S(B) and E(B) for that loss at every batch B.
4. The devices: a micro-batch cap for ``--device-memory-gb`` from the activation memory measured on
   real micro-batches (:mod:`speechbs.advise.memory`), then, per batch, the planner's micro-batches
   per device for ``--gpus`` (the accumulation steps), and the recipe's peak LR at that batch.

It prints a table and writes ``advice.json`` and ``advice.png`` into ``--out``. Everything beyond the
probe's loss is an extrapolation: B_noise grows as the loss falls, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from speechbs.advise.tradeoff import Tradeoff, bootstrap_interval, candidate_batches, ratio_of_means, recommend
from speechbs.atomic import write_text
from speechbs.configio import toml_str
from speechbs.errors import ConfigError, DataError, PlanError

CAVEAT = ("An extrapolation from the start of training: the noise scale was measured over the probe's "
          "first steps and grows as the loss falls (McCandlish et al. 2018), so the predicted steps and "
          "audio hold for the probe's loss, and a longer run's best batch is likely larger "
          "(batch.schedule = \"adaptive\" follows it). The micro-batch cap is estimated from the "
          "activations autograd saves, with a headroom; check peak_memory_gib in the first steps.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the pretraining recipe to advise on (TOML)")
    parser.add_argument("--gpus", type=int, required=True, help="devices the real run will use, all nodes together")
    parser.add_argument("--device-memory-gb", type=float, required=True, help="memory of one device, GiB")
    parser.add_argument("--budget-hours", type=float, default=None,
                        help="wall-clock hours the real run may take on --gpus devices: adds the steps that fit "
                             "at the probe's audio throughput per device")
    parser.add_argument("--probe-steps", type=int, default=60,
                        help="steps of the probe run (default 60; its second half gives the noise scale)")
    parser.add_argument("--out", default=None, help="output directory (default runs/advise/<recipe name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for the probe and the advice, e.g. --set batch.seconds=120")


def main(args: argparse.Namespace) -> int:
    from speechbs.configio import load_config

    _check_arguments(args)
    base = load_config(args.recipe, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / "advise" / base.run.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for advice.json and advice.png")
    # The probe: the recipe's first steps at its own (first) batch, measuring every step.
    probe_sets = [*args.overrides, f"run.output_dir={toml_str(out)}", "run.name=probe", 'batch.schedule="constant"',
                  "train.grad_noise_every=1", "train.valid_every=0", f"train.checkpoint_every={args.probe_steps}",
                  "train.keep_last=1", f"train.log_every={max(1, args.probe_steps // 5)}"]
    cfg = load_config(args.recipe, probe_sets)
    advice = advise(cfg, args, out)
    write_text(out / "advice.json", json.dumps(advice, indent=2) + "\n")
    from speechbs.report.plots import write_advice_plot

    write_advice_plot(advice, out / "advice.png")
    print(render(advice))
    print(f"wrote {out / 'advice.json'} and {out / 'advice.png'}")
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus}: give the number of devices the run will use (>= 1)")
    if not args.device_memory_gb > 0:
        raise ConfigError(f"--device-memory-gb {args.device_memory_gb}: give one device's memory in GiB (> 0)")
    if args.budget_hours is not None and not args.budget_hours > 0:
        raise ConfigError(f"--budget-hours {args.budget_hours}: give the run's wall-clock hours (> 0), or leave it out")
    if args.probe_steps < 10:
        raise ConfigError(f"--probe-steps {args.probe_steps}: the noise scale needs >= 10 measurements (60 is the default)")


def advise(cfg: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run (or reuse) the probe, measure, and build the advice (the content of advice.json)."""
    from speechbs.data.manifest import read_manifest
    from speechbs.dist import distributed
    from speechbs.tasks.ssl import SSLTask
    from speechbs.train.loop import train

    with distributed("auto") as ctx:
        if ctx.world_size > 1:
            raise ConfigError("speechbs advise runs as one process (its probe is minutes): start it without torchrun")
        train(cfg, SSLTask, ctx, until_step=args.probe_steps)
        probe = _read_probe(out / "probe", args.probe_steps)
        manifest = read_manifest(cfg.data.train_manifest)
        memory = _measure_memory(cfg, manifest, SSLTask(cfg, ctx), args.device_memory_gb)
    tradeoff = Tradeoff.through(probe["b_noise_s"], cfg.batch.seconds, probe["steps"])
    return _table(cfg, manifest, args, probe, memory, tradeoff)


def _read_probe(run_dir: Path, num_steps: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r.get("kind") == "train"}  # the last record of each step
    steps = [train[k] for k in sorted(train) if k <= num_steps]
    half = steps[len(steps) // 2:]
    pairs = [(r["noise_tr_sigma_1s_step"], r["noise_mu_sq_step"]) for r in half
             if _finite(r.get("noise_tr_sigma_1s_step")) and _finite(r.get("noise_mu_sq_step"))]
    if len(pairs) < 5:
        raise DataError(f"{run_dir}: the probe run measured gradient noise on {len(pairs)} of its last "
                        f"{len(half)} steps; give more --probe-steps, or a batch of more than one utterance")
    tr, sq = [t for t, _ in pairs], [s for _, s in pairs]
    b_noise = ratio_of_means(tr, sq)
    if not b_noise > 0:
        raise DataError(f"{run_dir}: the probe's mean |G|^2 is not positive (gradient noise dominates every "
                        f"measurement): no noise scale to advise from; give more --probe-steps")
    low, high = bootstrap_interval(tr, sq)
    losses = [r["loss"] for r in steps[-max(1, len(steps) // 10):] if _finite(r.get("loss"))]
    speeds = [r["audio_s_per_s"] for r in steps[3:] if _finite(r.get("audio_s_per_s"))]
    launches = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else []
    env = launches[-1] if launches else {}  # one entry per launch of the run
    return {"run_dir": str(run_dir), "steps": len(steps), "b_noise_s": b_noise, "b_noise_interval_s": [low, high],
            "num_measurements": len(pairs), "final_loss": statistics.fmean(losses) if losses else None,
            "first_loss": steps[0].get("loss"), "hours_seen": steps[-1].get("hours_seen"),
            "packing": statistics.fmean(r["packing"] for r in steps if _finite(r.get("packing"))),
            "audio_s_per_s_per_device": statistics.median(speeds) if speeds else None,
            "device": ", ".join(env.get("devices", [])) or "unknown"}


def _measure_memory(cfg: Any, manifest: Any, task: Any, memory_gb: float) -> dict[str, Any]:
    """Saved activation bytes per padded second on up to three real micro-batches of the recipe's first step."""
    from speechbs.advise.memory import HEADROOM, PEAK_PER_SAVED, max_device_seconds, saved_bytes, static_bytes
    from speechbs.data.loader import build_planner, iter_steps

    planner = build_planner(manifest, cfg.batch, cfg.audio, cfg.run.seed)
    step = next(iter(iter_steps(planner, manifest, cfg.audio, rank=0, world_size=1, num_workers=0,
                                targets=task.targets, partners=task.partners, num_steps=1)))
    ratios = []
    task.model.train()
    for micro in [mb for mb in step.micro_batches if not mb.is_empty][:3]:
        padded_s = micro.wav_BT.numel() / cfg.audio.sample_rate_hz
        num_bytes = saved_bytes(task.model, lambda mb=micro: task.forward(task.model, mb, step=0).loss_sum)
        ratios.append(num_bytes / padded_s)
    per_s = max(ratios)  # the most demanding of the measured micro-batches
    static = static_bytes(task.model)
    cap_s = max_device_seconds(memory_gb, static, per_s)
    longest_s = float(planner.capped_N.max()) / cfg.audio.sample_rate_hz
    if cap_s < longest_s:
        raise ConfigError(f"--device-memory-gb {memory_gb:g}: by the measured {per_s / 2**20:.1f} MiB of saved activations "
                          f"per padded second and {static / 2**30:.2f} GiB of weights and optimizer state, a device "
                          f"holds {max(cap_s, 0):.1f} s, less than the longest utterance ({longest_s:.1f} s): "
                          f"crop (batch.crop = \"max\"), use a smaller model, or more memory per device")
    return {"method": "bytes of the tensors autograd saves for backward (parameters left out), per padded second, "
                      "x peak_per_saved for the backward's peak (speechbs/advise/memory.py)",
            "saved_mib_per_padded_s": per_s / 2**20, "peak_per_saved": PEAK_PER_SAVED,
            "activation_mib_per_padded_s": PEAK_PER_SAVED * per_s / 2**20, "static_gib": static / 2**30,
            "device_memory_gb": memory_gb, "headroom": HEADROOM, "max_device_seconds": cap_s,
            "num_micro_batches_measured": len(ratios)}


def _table(cfg: Any, manifest: Any, args: argparse.Namespace, probe: dict, memory: dict,
           tradeoff: Tradeoff) -> dict[str, Any]:
    from speechbs.data.loader import build_planner
    from speechbs.train.schedule import peak_lr

    total_s = float(manifest.num_model_samples(cfg.audio.sample_rate_hz).sum()) / cfg.audio.sample_rate_hz
    cap_s = memory["max_device_seconds"]
    # Doublings of the recipe's batch from 1/8 to 8x the noise scale (and the recipe's batch itself),
    # up to the whole training set.
    candidates = candidate_batches(min(tradeoff.b_noise_s / 8, cfg.batch.seconds),
                                   min(max(8 * tradeoff.b_noise_s, cfg.batch.seconds), total_s), cfg.batch.seconds)
    budget_audio_s = None
    speed = probe["audio_s_per_s_per_device"]
    if args.budget_hours is not None and speed:
        budget_audio_s = args.budget_hours * 3600 * args.gpus * speed
    rows = []
    for batch_s in candidates:
        row = {"batch_s": batch_s, "per_device_s": batch_s / args.gpus, "steps": tradeoff.steps(batch_s),
               "steps_vs_min": tradeoff.steps(batch_s) / tradeoff.steps_min,
               "audio_h": tradeoff.audio_s(batch_s) / 3600, "audio_vs_min": tradeoff.audio_s(batch_s) / tradeoff.audio_min_s,
               "peak_lr": peak_lr(cfg.optim, batch_s)}
        try:
            planner = build_planner(manifest, replace(cfg.batch.constant(batch_s), max_device_seconds=cap_s),
                                    cfg.audio, cfg.run.seed)
            splits = [planner.split(planner.next_batch(), args.gpus) for _ in range(min(5, planner.steps_per_epoch))]
            row["micro_batches_per_device"] = statistics.fmean(len(split[0]) for split in splits)
            row["empty_micro_batches"] = statistics.fmean(sum(mb.is_empty for rank in split for mb in rank)
                                                          for split in splits)
        except PlanError as exc:
            row["plan_error"] = str(exc)
        if budget_audio_s is not None:
            row["steps_in_budget"] = budget_audio_s / batch_s
        rows.append(row)
    feasible = [r["batch_s"] for r in rows if "plan_error" not in r]
    if not feasible:
        raise PlanError(f"no batch from {candidates[0]:g} to {candidates[-1]:g} s can be planned on "
                        f"{cfg.data.train_manifest}: {rows[-1]['plan_error']}")
    chosen, why = recommend(tradeoff, feasible)
    return {"recipe": str(args.recipe), "gpus": args.gpus, "device_memory_gb": args.device_memory_gb,
            "budget_hours": args.budget_hours, "budget_audio_h": None if budget_audio_s is None else budget_audio_s / 3600,
            "probe": probe, "memory": memory,
            "tradeoff": {"b_noise_s": tradeoff.b_noise_s, "steps_min": tradeoff.steps_min,
                         "audio_min_h": tradeoff.audio_min_s / 3600, "probe_batch_s": cfg.batch.seconds,
                         "for_loss": probe["final_loss"]},
            "table": rows,
            "recommended": {**next(r for r in rows if r["batch_s"] == chosen), "why": why},
            "caveat": CAVEAT}


def render(advice: dict[str, Any]) -> str:
    """The advice as the terminal shows it."""
    probe, trade, memory = advice["probe"], advice["tradeoff"], advice["memory"]
    low, high = probe["b_noise_interval_s"]
    lines = [f"probe: {probe['steps']} steps of {trade['probe_batch_s']:g} s, loss {probe['first_loss']:.3f} -> "
             f"{probe['final_loss']:.3f}; noise scale B_noise = {trade['b_noise_s']:.3g} s of audio "
             f"(90% interval {low:.3g}-{high:.3g} s, {probe['num_measurements']} measurements)",
             f"devices: {advice['gpus']} x {advice['device_memory_gb']:g} GiB -> micro-batch cap "
             f"{memory['max_device_seconds']:.1f} s ({memory['activation_mib_per_padded_s']:.1f} MiB of "
             f"activations per padded second at the step's peak, {1024 * memory['static_gib']:.1f} MiB weights + optimizer, "
             f"{memory['headroom']:.0%} of memory)", ""]
    budget = advice["budget_hours"] is not None
    header = ("| batch (s) | per device (s) | steps to the probe's loss | x fewest | audio (h) | x least "
              "| micro-batches/device | peak LR |")
    lines += [header + (" steps in budget |" if budget else ""), "|" + "---|" * (header.count("|") - 1 + budget)]
    for row in advice["table"]:
        mark = " <-" if row["batch_s"] == advice["recommended"]["batch_s"] else ""
        micro = f"{row['micro_batches_per_device']:.1f}" if "micro_batches_per_device" in row else "cannot plan"
        line = (f"| {row['batch_s']:g}{mark} | {row['per_device_s']:.3g} | {row['steps']:.0f} | {row['steps_vs_min']:.2f} | {row['audio_h']:.3g} | "
                f"{row['audio_vs_min']:.2f} | {micro} | {row['peak_lr']:.3g} |")
        lines.append(line + (f" {row['steps_in_budget']:.0f} |" if budget and "steps_in_budget" in row else ""))
    rec = advice["recommended"]
    lines += ["", f"recommended: batch.seconds = {rec['batch_s']:g} ({rec['why']}); "
                  f"batch.max_device_seconds = {memory['max_device_seconds']:.1f}, peak LR {rec['peak_lr']:.3g}", "",
              advice["caveat"]]
    if budget and probe["audio_s_per_s_per_device"]:
        lines.append(f"The budget assumes the probe's {probe['audio_s_per_s_per_device']:.3g} s of audio per second per "
                     f"device ({probe['device']}); run advise on the training hardware for a true figure.")
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
