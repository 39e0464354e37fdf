"""speechbs demo: the demo sweep recipe is fair and quick, and the demo prints a table and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import speechbs.demo as demo
from speechbs.cli import main as cli_main
from speechbs.report import PLOT_NAMES
from speechbs.sweep import plan_sweep
from tests.sweep.conftest import StubRunner


def test_demo_sweep_is_at_least_three_batch_sizes_at_equal_hours():
    plan = plan_sweep(demo.DEMO_RECIPE)
    assert len(plan.points) >= 3
    assert plan.cfg.sweep.budget == "hours"
    hours = [p.batch_s * p.num_steps / 3600 for p in plan.points]
    assert max(hours) - min(hours) < 0.01 * max(hours)
    # CPU budget: the whole sweep pretrains at most ~3 h of audio per point (about 100 audio-s/s on 2 cores)
    assert sum(hours) <= 9.0
    assert [t.name for t in plan.cfg.test] == ["test"] and plan.cfg.finetune[0].name == "train"


def test_demo_probes_a_corpus_label_file():
    """The demo shows a probe, from a label file `speechbs corpus` writes (voice family: every split has each)."""
    from speechbs.data.corpus import DEFAULT_MANIFEST_DIR, PROBE_LABELS

    [probe] = plan_sweep(demo.DEMO_RECIPE).cfg.probe
    assert probe.label in PROBE_LABELS and probe.head == "linear" and probe.epochs <= 50
    manifests = [probe.train_manifest, probe.valid_manifest, probe.test_manifest]
    assert [Path(m) for m in manifests] == [Path(DEFAULT_MANIFEST_DIR) / f"{s}.tsv" for s in ("train", "valid", "test")]


def test_demo_runs_sweep_and_prints_report(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls.log"
    calls.write_text("")
    monkeypatch.setenv("STUB_CALLS", str(calls))
    monkeypatch.delenv("STUB_FAIL", raising=False)

    class FakeSummary:
        built_now = False

        def describe(self) -> str:
            return "fake corpus"

    monkeypatch.setattr(demo, "build_corpus", lambda *a, **k: FakeSummary())
    monkeypatch.setattr(demo, "make_runner", lambda: StubRunner())
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "WER train/test" in text and "| bs15s |" in text and "| bs60s |" in text
    assert "probe family acc %" in text
    assert all((out / "report" / name).is_file() for name in (*PLOT_NAMES, "probe_vs_batch.png"))
    # pretrain, finetune, decode, score and the family probe per point, and the fixed-state noise of the 30 s point
    assert len(calls.read_text().splitlines()) == 5 * 3 + 1


def test_demo_reads_the_corpus_from_manifest_dir(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls.log"
    calls.write_text("")
    monkeypatch.setenv("STUB_CALLS", str(calls))

    class FakeSummary:
        built_now = True

        def describe(self) -> str:
            return "fake corpus"

    monkeypatch.setattr(demo, "build_corpus", lambda *a, **k: FakeSummary())
    monkeypatch.setattr(demo, "make_runner", lambda: StubRunner())
    out, manifests = tmp_path / "demo", tmp_path / "m"
    assert cli_main(["demo", "--out", str(out), "--manifest-dir", str(manifests)]) == 0
    status = (out / "sweep.json").read_text()
    assert f"data.train_manifest=\\\"{manifests / 'train.tsv'}\\\"" in status
    assert str(manifests / "test.tsv") in status and "manifests/builtin" not in status
    probes = [stage["argv"] for point in json.loads(status)["points"] for stage in point["stages"]
              if stage["kind"] == "probe"]
    assert probes and all(str(manifests / "valid.tsv") in argv for argv in probes)  # the probe reads them too
