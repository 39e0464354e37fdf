"""Fault injection: SIGKILL a pretraining run at random times and inside checkpoint writes, then resume.

One reference run trains ``--steps`` steps without interruption. A second run
in another directory is killed (SIGKILL to its whole process group, as the
OOM killer or a lost node does) ``--kills`` times at a random moment and
``--write-kills`` times while a checkpoint is being written (the moment its
temporary file appears), and relaunched with the same command after each
kill until it finishes. After every kill the newest checkpoint must load;
at the end the faulted run's parameters must equal the reference bit for bit
and its per-step losses must be the same.

The table says how many faults were injected of each kind, how many landed
inside a write (the temporary file still present when the process died), how
many left a loadable last checkpoint, and whether the final model is
identical. Audio is random noise (what is learned does not matter here);
``--size base`` makes the checkpoint files large (about 1.1 GB with Adam's
moments) so that kills inside writes are frequent.

Usage: python -m bench.faults [--size tiny|base] [--steps 12] [--kills 5] [--write-kills 10] [--seed 0]
       [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from speechbs.checkpoint import latest_checkpoint, load_checkpoint
from speechbs.data.manifest import Manifest, write_manifest
from speechbs.rundir import environment

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "wav2vec2" / "tiny_builtin.toml"
# Deterministic runs: no dropout from the global RNG, no loader workers to race.
EXACT = ["model.dropout=0", "model.attention_dropout=0", "model.dropout_input=0", "data.num_workers=0"]


def noise_corpus(root: Path, num_files: int, seed: int) -> Path:
    """``num_files`` clips of 1-3 s of noise at 16 kHz and their manifest."""
    rng = np.random.default_rng(seed)
    names, frames = [], []
    for i in range(num_files):
        n = int(rng.integers(16_000, 48_000))
        sf.write(root / f"u{i:04d}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), 16_000)
        names.append(f"u{i:04d}.wav")
        frames.append(n)
    write_manifest(Manifest(root, names, frames, [16_000] * num_files), root / "train.tsv")
    return root / "train.tsv"


def command(manifest: Path, out: Path, size: str, steps: int) -> list[str]:
    sets = [f"data.train_manifest={manifest}", f"data.valid_manifest={manifest}", f"run.output_dir={out.parent}",
            f"run.name={out.name}", f"train.num_steps={steps}", f"model.size=\"{size}\"", "batch.seconds=8",
            "batch.max_device_seconds=4", "train.valid_every=0", "train.checkpoint_every=1", "train.keep_last=2",
            "train.log_every=1", *EXACT]
    return [sys.executable, "-m", "speechbs", "pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]


def launch(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for_write(proc: subprocess.Popen, ckpt_dir: Path, timeout_s: float) -> bool:
    """Poll until a checkpoint's temporary file exists (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(ckpt_dir.glob(".*.tmp")):
            return True
        time.sleep(0.0005)
    return False


def final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict[int, float]]:
    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "train":
            losses[row["step"]] = row["loss"]  # a replayed step: the last record counts
    return ckpt["model"], losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs at a random moment of training")
    parser.add_argument("--write-kills", type=int, default=10, help="SIGKILLs while a checkpoint is written")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default="", help="keep the run directories here (default: a temporary one)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        manifest = noise_corpus(root / "audio", args.files, args.seed)
        start = time.monotonic()
        ref = subprocess.run(command(manifest, root / "reference", args.size, args.steps), cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True)
        if ref.returncode != 0:
            raise SystemExit(f"reference run failed:\n{ref.stderr[-2000:]}")
        run_s = time.monotonic() - start
        run = root / "faulted"
        faults = ["random"] * args.kills + ["write"] * args.write_kills
        rng.shuffle(faults)
        counts = {kind: {"injected": 0, "in_write": 0, "loadable": 0, "missed": 0} for kind in ("random", "write")}
        launches = 0
        while True:
            proc = launch(command(manifest, run, args.size, args.steps))
            launches += 1
            if not faults:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"final relaunch failed:\n{err.decode()[-2000:]}")
                break
            kind = faults.pop()
            if kind == "random":
                deadline = time.monotonic() + rng.uniform(0.2, 1.0) * run_s
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.01)
                hit = proc.poll() is None
            else:
                hit = wait_for_write(proc, run / "checkpoints", run_s * 2)
            in_write = any((run / "checkpoints").glob(".*.tmp")) if (run / "checkpoints").is_dir() else False
            kill_group(proc)
            if not hit:  # the run finished first: nothing was injected; put the fault back
                counts[kind]["missed"] += 1
                if latest_checkpoint(run / "checkpoints") is not None:
                    shutil.rmtree(run)  # start over, so the remaining faults land in a live run
                faults.append(kind)
                if counts[kind]["missed"] > 20:
                    raise SystemExit(f"{kind} faults keep missing: the run is too short; raise --steps")
                continue
            counts[kind]["injected"] += 1
            counts[kind]["in_write"] += int(in_write)
            latest = latest_checkpoint(run / "checkpoints")
            try:
                if latest is not None:
                    load_checkpoint(latest)
                counts[kind]["loadable"] += 1  # no checkpoint yet is a clean state too: the rerun starts fresh
            except Exception:  # noqa: BLE001 - counted, and the table shows it
                pass
        ref_params, ref_losses = final_state(root / "reference")
        got_params, got_losses = final_state(run)
        identical = ref_params.keys() == got_params.keys() and all(
            torch.equal(ref_params[k], got_params[k]) for k in ref_params)
        result = {"machine": environment(), "size": args.size, "steps": args.steps, "launches": launches,
                  "counts": counts, "params_identical": identical, "losses_identical": ref_losses == got_losses,
                  "reference_run_s": run_s,
                  "checkpoint_mb": latest_checkpoint(run / "checkpoints").stat().st_size / 2**20}
    print(f"fault injection: {args.size} model, {args.steps} steps, checkpoint every step "
          f"({result['checkpoint_mb']:.1f} MB), {launches} launches")
    print("| fault | injected | inside a write | last checkpoint loadable |")
    print("|---|---|---|---|")
    for kind, c in counts.items():
        print(f"| SIGKILL {'at a random moment' if kind == 'random' else 'during a checkpoint write'} | "
              f"{c['injected']} | {c['in_write']} | {c['loadable']} / {c['injected']} |")
    print(f"final parameters bit-identical to the uninterrupted run: {identical}; "
          f"per-step losses identical: {result['losses_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
