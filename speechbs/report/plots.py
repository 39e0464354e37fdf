"""The report plots (matplotlib, Agg backend: no display needed).

- ``wer_vs_batch.png``: WER (solid) and CER (dashed) of each (split, test) against the pretraining batch;
- ``wer_vs_hours.png``: WER and CER against hours of audio seen in pretraining (final and milestone
  checkpoints): the seed study's "data seen" view;
- ``grad_noise_fixed_state.png``: from ``speechbs noise`` (``noise.json``): gradient std, B_simple and
  gradient RMS against the batch, each checkpoint measured at every batch size (a fixed model state,
  where the 1/sqrt(2)-per-doubling line applies);
- ``grad_noise_vs_batch.png``: the online values of each run at matched hours seen (different models:
  no 1/sqrt(2) line is drawn, since nothing predicts one across them), with the B_simple = batch line;
- ``loss_curves.png``: pretraining train loss per batch size against steps and against hours seen;
- ``probe_vs_batch.png`` (when a point has ``probe/<task>/probe.json``): each probe's test accuracy
  against the pretraining batch.

Batch axes are ticked at the batch sizes that ran. Runs that differ only by seed are one point, their
mean, with a bar of +- one sample sd. A plot with nothing to show is still written, with a line
saying what is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

from speechbs.report.collect import Collected, mean_sd
from speechbs.report.table import probe_tasks, score_columns

PLOT_NAMES = ("wer_vs_batch.png", "wer_vs_hours.png", "grad_noise_fixed_state.png", "grad_noise_vs_batch.png",
              "loss_curves.png")


def _pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Write one figure as every report plot is written, and free it."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_plots(collected: Collected, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = (_wer_vs_batch, _wer_vs_hours, _fixed_state, _noise_vs_batch, _loss_curves)
    paths = []
    extra = (("probe_vs_batch.png", _probe_vs_batch),) if probe_tasks(collected) else ()
    for name, writer in (*zip(PLOT_NAMES, writers), *extra):
        fig = writer(plt, collected)
        path = out_dir / name
        _save(plt, fig, path)
        paths.append(path)
    return paths


def _probe_vs_batch(plt, collected: Collected):
    """``probe_vs_batch.png``: each probe task's test accuracy against the pretraining batch (mean +- sd over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for task in probe_tasks(collected):
        points = [(g.batch_s, [100 * r.probes[task] for r in g.rows if task in r.probes]) for g in collected.groups
                  if g.batch_s is not None and any(task in r.probes for r in g.rows)]
        _errorbar(ax, points, label=task)
    batch_axis(ax, [g.batch_s for g in collected.groups])
    ax.set_xlabel("pretraining batch (s of audio per step)")
    ax.set_ylabel("probe test accuracy, %")
    ax.set_title("frozen-feature probes vs batch size" + _seeds_note(collected))
    ax.legend(title="probe task (docs/probes.md)", fontsize=8)
    return fig


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)


def _errorbar(ax, points: list[tuple[float, list[float]]], **style) -> None:
    """Mean +- sd over seeds at each x (no bar for a single seed)."""
    xs, means, sds = [], [], []
    for x, values in sorted(points):
        mean, sd = mean_sd(values)
        xs.append(x)
        means.append(mean)
        sds.append(sd or 0.0)
    ax.errorbar(xs, means, yerr=sds if any(sds) else None, marker="o", capsize=3, **style)


def _wer_vs_batch(plt, collected: Collected):
    fig, ax = plt.subplots(figsize=(6, 4))
    pairs = score_columns(collected)
    for split, test in pairs:
        for metric, style in (("wer", "-"), ("cer", "--")):  # CER too: small models sit near 100% WER
            points = [(g.batch_s, g.score_values(split, test, metric)) for g in collected.groups
                      if g.batch_s is not None and g.score_values(split, test, metric)]
            if points:
                _errorbar(ax, points, linestyle=style, label=f"{metric.upper()} {split} / {test}")
    batch_axis(ax, [g.batch_s for g in collected.groups])
    ax.set_xlabel("pretraining batch (s of audio per step)")
    ax.set_ylabel("WER (solid) / CER (dashed), %")
    ax.set_title("WER and CER vs batch size" + _seeds_note(collected))
    if pairs:
        ax.legend(title="fine-tune / test", fontsize=8)
    else:
        _empty(ax, "no score.json found: no fine-tuned and scored runs yet")
    return fig


def _seeds_note(collected: Collected) -> str:
    most = max((len(g.rows) for g in collected.groups), default=1)
    return f"\n(mean +- sd over up to {most} seeds)" if most > 1 else ""


def _wer_vs_hours(plt, collected: Collected):
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for group in collected.groups:
        pairs = {(s.split, s.test) for r in group.rows for s in r.scores}
        for split, test in sorted(pairs):
            for metric, style in (("wer", "-"), ("cer", "--")):
                by_hours: dict[float, list[float]] = {}
                for row in group.rows:
                    for s in row.scores:
                        value = getattr(s, metric)
                        if (s.split == split and s.test == test and s.hours_seen and value is not None
                                and not s.from_final):
                            by_hours.setdefault(round(s.hours_seen, 3), []).append(value)
                if by_hours:
                    _errorbar(ax, list(by_hours.items()), linestyle=style,
                              label=f"{group.label}: {metric.upper()} {split} / {test}")
                    drawn = True
    ax.set_xlabel("hours of audio seen in pretraining")
    ax.set_ylabel("WER (solid) / CER (dashed), %")
    ax.set_title("WER and CER vs hours seen" + _seeds_note(collected))
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=6)
    else:
        _empty(ax, "no scored runs with hours seen yet")
    return fig


def _fixed_state(plt, collected: Collected):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    records = [dict(r, label=f"{row.label}, step {r.get('step')} ({r.get('hours_seen') or 0:.3g} h)")
               for row in collected.rows for r in row.fixed_noise]
    if records:
        fixed_state_axes(axes, records)
        fig.suptitle("gradient noise at fixed states: each checkpoint measured at every batch size (speechbs noise)")
    else:
        for ax in axes:
            _empty(ax, "no noise.json found\n(run `speechbs noise CHECKPOINT ... --out\n<point>/noise/<name>`)")
    fig.tight_layout()
    return fig


def _noise_vs_batch(plt, collected: Collected):
    """Online values at matched hours seen: each point is another model, so no slope is implied."""
    fig, (std_ax, scale_ax) = plt.subplots(1, 2, figsize=(11, 4))
    hours = collected.matched_hours
    for ax, attr, ylabel in ((std_ax, "grad_std", "gradient std at the run's batch"),
                             (scale_ax, "grad_noise_s", "gradient noise scale B_simple (s)")):
        ax.set_xlabel("pretraining batch (s of audio per step)")
        ax.set_ylabel(ylabel)
        points = [(g.batch_s, g.values(attr)) for g in collected.groups if g.batch_s is not None and g.values(attr)]
        points = [(x, [v for v in values if v > 0]) for x, values in points if any(v > 0 for v in values)]
        if not points:
            _empty(ax, "no noise_* values in metrics.jsonl\n(set train.grad_noise_every > 0)")
            continue
        _errorbar(ax, points, label=f"online, at {hours:.3g} h seen")
        if attr == "grad_noise_s":
            xs = [x for x, _ in points]
            ax.plot([min(xs), max(xs)], [min(xs), max(xs)], linestyle="--", color="gray", label="B_simple = batch")
        batch_axis(ax, [x for x, _ in points])
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("online gradient noise, each run at matched hours seen (different models; see the fixed-state figure)"
                 if hours is not None else "online gradient noise")
    return fig


def _loss_curves(plt, collected: Collected):
    fig, (by_step, by_hours) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for row in collected.rows:
        if not row.curve:
            continue
        steps, hours, losses = zip(*row.curve)
        label = f"{row.batch_s:g} s" + (f" seed {row.seed}" if row.seed is not None and len(collected.rows) > len(
            collected.groups) else "") if row.batch_s is not None else row.label
        by_step.plot(steps, losses, label=label, linewidth=1)
        by_hours.plot(hours, losses, label=label, linewidth=1)
        drawn = True
    by_step.set_xlabel("optimizer step")
    by_hours.set_xlabel("hours of audio seen")
    for ax in (by_step, by_hours):
        ax.set_ylabel("pretraining train loss")
    fig.suptitle("pretraining loss per batch size")
    if drawn:
        by_step.legend(title="batch", fontsize=7)
    else:
        _empty(by_step, "no metrics.jsonl with train losses found")
    return fig


def batch_axis(ax, batches_s) -> None:
    """A log batch axis ticked at the batch sizes that ran (15, 30, 60 s), not at powers of ten."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({float(b) for b in batches_s if b})
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])


def fixed_state_axes(axes, records: list[dict]) -> None:
    """grad std, B_simple and grad RMS against the batch, one line per ``noise.json`` record, with intervals.

    Each record is one checkpoint measured at every batch size (``speechbs noise``): a fixed model
    state, so the 1/sqrt(2)-per-doubling line applies to its std and is drawn through its points.
    """
    std_ax, b_ax, rms_ax = axes
    batches = []
    for record in records:
        rows = [r for r in record.get("batches", []) if r.get("grad_std")]
        if not rows:
            continue
        xs = [r["batch_s"] for r in rows]  # the std is computed at the real seconds; the axis names the setting
        batches += [r["batch_s"] for r in rows]
        label = record.get("label") or f"step {record.get('step')} ({record.get('hours_seen') or 0:.3g} h seen)"
        for ax, key in ((std_ax, "grad_std"), (b_ax, "b_simple_s"), (rms_ax, "grad_rms")):
            points = [(x, r[key], r.get(f"{key}_ci") or [None, None]) for x, r in zip(xs, rows) if r.get(key)]
            if not points:
                continue
            px, py, ci = zip(*points)
            # Bars never negative: a record written before intervals were centred can hold its estimate outside.
            low = [max(0.0, y - (c[0] if c[0] is not None else y)) for y, c in zip(py, ci)]
            high = [max(0.0, (c[1] if c[1] is not None else 10 * y) - y) for y, c in zip(py, ci)]  # unbounded: long
            line = ax.errorbar(px, py, yerr=[low, high], marker="o", capsize=3, label=label)
            if key == "grad_std":  # fixed state: the std of a mean of independent targets
                anchor_x = math.exp(sum(math.log(x) for x in px) / len(px))
                anchor_y = math.exp(sum(math.log(y) for y in py) / len(py))
                ax.plot(px, [anchor_y * (x / anchor_x) ** -0.5 for x in px], linestyle="--",
                        color=line.lines[0].get_color(), alpha=0.6)
    if not batches:
        for ax in axes:
            _empty(ax, "no noise.json with measurements")
        return
    b_ax.plot(sorted(batches), sorted(batches), linestyle=":", color="gray", label="B_simple = batch")
    titles = (("gradient std per parameter (dashed: 1/sqrt(2) per doubling)", "grad std"),
              ("critical batch B_simple (s of audio; a bar to 10x: no upper bound)", "B_simple (s)"),
              ("RMS of the batch-mean gradient", "grad RMS"))
    for ax, (title, ylabel) in zip(axes, titles):
        batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_xlabel("batch (s of audio per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)


def write_noise_plot(record: dict, path: Path) -> Path:
    """``noise.png`` of one ``speechbs noise`` run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    fixed_state_axes(axes, [record])
    fig.suptitle(f"gradient noise at a fixed state: {record.get('model')} {Path(str(record.get('checkpoint'))).name}, "
                 f"{record.get('repeats')} batches per size (95% intervals)")
    fig.tight_layout()
    _save(plt, fig, path)
    return path


def write_probe_plot(record: dict, path: Path) -> Path:
    """``layer_weights.png`` of one ``speechbs probe`` run: the learned layer weights and each layer's own accuracy."""
    plt = _pyplot()
    weights = record["layer_weights"]
    layers = list(range(len(weights)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(layers, weights, color="tab:blue", alpha=0.7, label="learned weight (sums to 1)")
    ax.set_xlabel("layer (0 = projected conv features)")
    ax.set_ylabel("layer weight")
    ax.set_xticks(layers)
    acc_ax = ax.twinx()
    acc_ax.plot(layers, [100 * a for a in record["per_layer_accuracy"]], marker="o", color="tab:red",
                label="test accuracy of that layer alone")
    acc_ax.axhline(100 * record["chance_accuracy"], linestyle=":", color="gray", label="chance (majority class)")
    acc_ax.set_ylabel("test accuracy (%)")
    handles = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="best")
    ax.set_title(f"probe {record['task']} ({record['head']} head): {100 * record['accuracy']:.1f}% test accuracy, "
                 f"{record['num_classes']} classes", fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path)
    return path


def write_advice_plot(advice: dict, path: Path) -> Path:
    """``advice.png`` of ``speechbs advise``: predicted steps and audio to the probe's loss against the batch."""
    plt = _pyplot()
    rows, trade = advice["table"], advice["tradeoff"]
    batches = [r["batch_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(batches, [r["steps_vs_min"] for r in rows], marker="o", label="steps / fewest steps")
    ax.plot(batches, [r["audio_vs_min"] for r in rows], marker="s", label="audio / least audio")
    ax.axvline(trade["b_noise_s"], linestyle="--", color="gray", label=f"B_noise {trade['b_noise_s']:.3g} s")
    low, high = advice["probe"]["b_noise_interval_s"]
    if math.isfinite(low) and math.isfinite(high):
        ax.axvspan(low, high, color="gray", alpha=0.15, label="its 90% interval")
    ax.axvline(advice["recommended"]["batch_s"], color="tab:green", label=f"recommended {advice['recommended']['batch_s']:g} s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch (s of audio per step, all devices)")
    ax.set_ylabel("relative cost to reach the probe's loss")
    ax.set_title("steps/data trade-off (McCandlish et al. 2018), extrapolated from the probe run", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(plt, fig, path)
    return path
