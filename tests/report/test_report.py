"""speechbs report: table values, CSV and the four plots from run directories written here."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from speechbs.cli import main as cli_main
from speechbs.report import PLOT_NAMES, collect, markdown, to_csv


def write_point(root: Path, name: str, batch_s: float, *, noise: bool = True, wer: float | None = None,
                milestone_wer: float | None = None) -> Path:
    run = root / "points" / name / "pretrain"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f"[batch]\nseconds = {batch_s}\n[optim]\nlr = 5e-4\nlr_rule = \"sqrt\"\n"
                                     f"reference_seconds = 6000.0\n[train]\nnum_steps = 20\n")
    rows = []
    for step in range(1, 21):
        row = {"step": step, "kind": "train", "loss": float(step), "hours_seen": step * batch_s / 3600}
        if noise and step % 5 == 0:
            row["grad_noise_scale_s"] = batch_s * step  # median of the last rows is easy to check
            row["grad_std"] = step / batch_s
        rows.append(row)
    rows.append({"step": 20, "kind": "valid", "loss": 3.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "lo')
    for split, value in (("train", wer), ("train@0.1h", milestone_wer)):
        if value is not None:
            out = root / "points" / name / "decode" / split / "test"
            out.mkdir(parents=True)
            (out / "score.json").write_text(json.dumps({"wer": value, "cer": value / 2}))
    return run


@pytest.fixture
def sweep_root(tmp_path) -> Path:
    root = tmp_path / "sweep"
    write_point(root, "bs600s", 600.0, wer=40.0, milestone_wer=50.0)
    write_point(root, "bs87.5s", 87.5, noise=False, wer=55.5)
    write_point(root, "bs6000s", 6000.0)  # pretrained, not yet fine-tuned
    return root


def test_table_values_come_from_the_run_directories(sweep_root):
    collected = collect([sweep_root], last_rows=10)
    rows = {r.label: r for r in collected.rows}
    assert [r.label for r in collected.rows] == ["bs87.5s", "bs600s", "bs6000s"]  # sorted by batch
    row = rows["bs600s"]
    assert row.batch_s == 600.0 and row.steps == 20 and row.hours_seen == pytest.approx(20 * 600 / 3600)
    assert row.train_loss == pytest.approx(sum(range(11, 21)) / 10)  # mean of the last 10 train rows
    assert row.valid_loss == 3.25
    assert row.peak_lr == pytest.approx(5e-4 * (600 / 6000) ** 0.5)
    assert row.grad_noise_s == pytest.approx(600 * 12.5)  # median of 3000, 6000, 9000, 12000
    assert row.grad_std == pytest.approx(12.5 / 600)
    assert rows["bs87.5s"].grad_noise_s is None and rows["bs87.5s"].grad_std is None
    assert any("unreadable line" in n for n in collected.notes)
    assert any("bs6000s" in n and "not fine-tuned" in n for n in collected.notes)

    table = markdown(collected)
    main_table = table.split("Milestone")[0]
    lines = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| bs")}
    assert "| 40.0 | 20.0 |" in lines["bs600s"]
    assert lines["bs87.5s"].split("|")[9].strip() == "-"  # no noise measured
    assert lines["bs6000s"].rstrip().endswith("| - | - |")  # no scores
    assert "Milestone checkpoints" in table and "| bs600s | 0.1 | train | test | 50.0 | 25.0 |" in table


def test_csv_has_raw_numbers_and_empty_cells(sweep_root):
    reader = list(csv.DictReader(io.StringIO(to_csv(collect([sweep_root])))))
    by_run = {r["run"]: r for r in reader}
    assert float(by_run["bs600s"]["WER train/test"]) == 40.0
    assert float(by_run["bs600s"]["batch_min"]) == 10.0
    assert by_run["bs6000s"]["WER train/test"] == "" and by_run["bs87.5s"]["grad_noise_s"] == ""


def test_cli_writes_table_csv_and_four_plots(sweep_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["report", str(sweep_root), "--out", str(out)]) == 0
    for name in ("table.md", "table.csv", *PLOT_NAMES):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bs600s" in capsys.readouterr().out


def test_missing_pieces_never_crash(tmp_path, capsys):
    empty_run = tmp_path / "runs" / "r1"
    empty_run.mkdir(parents=True)
    (empty_run / "config.toml").write_text("not toml [")
    out = tmp_path / "report"
    assert cli_main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert all((out / name).is_file() for name in PLOT_NAMES)
    text = (out / "table.md").read_text()
    assert "| r1 | - |" in text and "config.toml is missing or unreadable" in text
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
