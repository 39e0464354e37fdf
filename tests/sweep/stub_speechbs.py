"""A stand-in for ``speechbs pretrain|finetune|decode|score|noise|probe`` that writes the contract's outputs fast.

Usage: python stub_speechbs.py COMMAND ARGS... (the same arguments as the real commands).
Every call is appended to $STUB_CALLS (one line: command and output directory), so tests can
count what ran. $STUB_FAIL names a command that exits 1 instead (a crashed stage).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path


def overrides(argv: list[str]) -> dict[str, object]:
    values = {}
    for flag, item in zip(argv, argv[1:]):
        if flag == "--set":
            key, raw = item.split("=", 1)
            try:
                values[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                values[key] = raw
    return values


def write_run(run_dir: Path, num_steps: int, batch_s: float, milestone_hours: list[float]) -> None:
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(
        f"[batch]\nseconds = {batch_s!r}\n[optim]\nlr = 0.002\nlr_rule = \"sqrt\"\nreference_seconds = 60.0\n"
        f"[train]\nnum_steps = {num_steps}\n")
    rows, milestones, marks = [], [], sorted(milestone_hours)
    for step in range(1, num_steps + 1):
        hours = step * batch_s / 3600
        rows.append({"step": step, "kind": "train", "loss": 5.0 - step / num_steps, "hours_seen": hours,
                     "batch_s": batch_s, "noise_window": 1, "noise_b_simple_s": 100.0 / batch_s ** 0.5})
        if marks and hours >= marks[0]:
            while marks and hours >= marks[0]:
                marks.pop(0)
            milestones.append(f"step_{step:08d}.pt")
            (ckpt / milestones[-1]).write_bytes(b"stub")
    rows.append({"step": num_steps, "kind": "valid", "loss": 4.5})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ckpt / f"step_{num_steps:08d}.pt").write_bytes(b"stub")
    (ckpt / "index.json").write_text(json.dumps({"latest": f"step_{num_steps:08d}.pt", "milestones": milestones}))


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    sets = overrides(rest)
    if os.environ.get("STUB_FAIL") == command:
        print(f"stub {command}: failing on purpose")
        return 1
    if command in ("pretrain", "finetune"):
        run_dir = Path(str(sets["run.output_dir"])) / str(sets["run.name"])
        if command == "pretrain":
            write_run(run_dir, int(sets["train.num_steps"]), float(sets["batch.seconds"]),
                      list(sets.get("train.milestone_hours", [])))
        else:
            write_run(run_dir, 10, 30.0, [])
            (run_dir / "checkpoints" / "best.pt").write_bytes(str(sets["finetune.init"]).encode())
        out = run_dir
    elif command == "decode":
        checkpoint, out = rest[0], Path(rest[rest.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        init = Path(checkpoint).read_text() if Path(checkpoint).is_file() else checkpoint
        batch = float(re.search(r"bs([0-9.]+)s", checkpoint).group(1))
        tag = re.search(r"@([0-9.]+)h", checkpoint)
        wer = 60.0 - 10 * (batch / 60) ** 0.5 - (5.0 if tag else 0.0)
        (out / "hyp.wrd").write_text("A B\n")
        (out / "ref.wrd").write_text("A C\n")
        (out / "decode.json").write_text(json.dumps({"checkpoint": checkpoint, "init": init, "stub_wer": wer}))
    elif command == "score":
        out = Path(rest[0])
        wer = json.loads((out / "decode.json").read_text())["stub_wer"]
        (out / "score.json").write_text(json.dumps({"wer": wer, "cer": wer / 3, "num_utterances": 1}))
    elif command == "noise":
        out = Path(rest[rest.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        batches = [float(b) for b in rest[rest.index("--batch-seconds") + 1].split(",")]
        record = {"checkpoint": rest[0], "step": int(re.search(r"step_(\d+)", rest[0]).group(1))
                  if "step_" in rest[0] else 0, "batches": [
                      {"batch_s": b, "real_s_mean": b, "grad_std": 0.01 / b ** 0.5, "grad_std_ci": [0.005 / b ** 0.5,
                       0.02 / b ** 0.5], "b_simple_s": 40.0, "b_simple_s_ci": [20.0, None], "grad_rms": 0.02,
                       "grad_rms_ci": [0.01, 0.03]} for b in batches]}
        (out / "noise.json").write_text(json.dumps(record))
    elif command == "probe":
        out = Path(rest[rest.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        batch = float(re.search(r"bs([0-9.]+)s", rest[0]).group(1))
        (out / "probe.json").write_text(json.dumps({"task": rest[rest.index("--task") + 1],
                                                    "accuracy": 0.5 + batch / 1000, "chance_accuracy": 0.25}))
    else:
        return 2
    with open(os.environ["STUB_CALLS"], "a") as calls:
        calls.write(f"{command} {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
