"""Validation rules: each bad input gives its documented outcome, by default and with --strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbs.cli import main as cli
from speechbs.config import AudioConfig
from speechbs.data.manifest import Manifest, read_labels, read_manifest, write_labels, write_manifest
from speechbs.data.validate import (RULES, Vocabulary, read_vocab, validate_manifest, write_cleaned)
from speechbs.errors import DataError


def write_wav(path: Path, num_samples: int, rate_hz: int = 16_000, channels: int = 1) -> None:
    shape = (num_samples,) if channels == 1 else (num_samples, channels)
    sf.write(path, np.full(shape, 0.1, np.float32), rate_hz)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One file per rule, a manifest over them (counts from the headers) and labels."""
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio / "good.wav", 16_000)
    write_wav(audio / "good2.flac", 8_000)
    (audio / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(3000))
    write_wav(audio / "zero.wav", 0)
    write_wav(audio / "stereo.wav", 16_000, channels=2)
    write_wav(audio / "eight.wav", 8_000, rate_hz=8_000)
    write_wav(audio / "short.wav", 399)
    write_wav(audio / "long.wav", 16_000 * 3)
    write_wav(audio / "good.flac", 16_000)  # same id as good.wav
    write_wav(audio / "digits.wav", 16_000)
    write_wav(audio / "lower.wav", 16_000)
    write_wav(audio / "untranscribed.wav", 16_000)
    rows = [("good.wav", 16_000, "HELLO"), ("good2.flac", 8_000, "IT'S"), ("corrupt.flac", 5, "A"),
            ("zero.wav", 0, "A"), ("stereo.wav", 16_000, "A"), ("eight.wav", 8_000, "A"),
            ("short.wav", 399, "A"), ("long.wav", 48_000, "A"), ("good.flac", 16_000, "A"),
            ("digits.wav", 16_000, "ROOM 101"), ("lower.wav", 16_000, "hello"),
            ("untranscribed.wav", 16_000, ""), ("missing.wav", 10, "A")]
    manifest = Manifest(audio, [r[0] for r in rows], [r[1] for r in rows])
    write_manifest(manifest, tmp_path / "m.tsv")
    write_labels([r[2] for r in rows], tmp_path / "m.tsv")
    return tmp_path / "m.tsv"


EXPECTED_DEFAULT = {  # path -> (rule, fixed_at_load) with the default AudioConfig and max 2 s
    "corrupt.flac": ("unreadable", False), "missing.wav": ("unreadable", False),
    "zero.wav": ("empty", False), "stereo.wav": ("multi_channel", True),
    "eight.wav": ("other_rate", True), "short.wav": ("too_short", False),
    "long.wav": ("too_long", False), "good.flac": ("duplicate_id", False),
    "digits.wav": ("unknown_chars", False), "lower.wav": ("unknown_chars", False),
    "untranscribed.wav": ("missing_transcript", False),
}


def run(tsv: Path, cfg: AudioConfig, labels: str | None = "ltr"):
    manifest = read_manifest(tsv)
    return manifest, validate_manifest(manifest, cfg, labels=read_labels(manifest, labels) if labels else None,
                                       label_kind=labels or "ltr")


def test_every_bad_input_gets_its_rule_and_outcome(corpus: Path) -> None:
    _, report = run(corpus, AudioConfig(max_seconds=2.0))
    got = {p.path: (p.rule, p.fixed_at_load) for p in report.problems}
    assert got == EXPECTED_DEFAULT
    assert all(p.rule in RULES for p in report.problems)
    kept = [read_manifest(corpus).paths[i] for i in report.keep_indices()]
    assert kept == ["good.wav", "good2.flac", "stereo.wav", "eight.wav"]
    assert not report.ok
    text = report.format(max_listed=0, list_warnings=True)
    for path, (rule, _) in EXPECTED_DEFAULT.items():
        assert f"{path}: {rule}:" in text


def test_reject_policies_turn_warnings_into_skips(corpus: Path) -> None:
    _, report = run(corpus, AudioConfig(max_seconds=2.0, on_other_rate="reject", multi_channel="reject"))
    got = {p.path: (p.rule, p.fixed_at_load) for p in report.problems}
    assert got["stereo.wav"] == ("multi_channel", False) and got["eight.wav"] == ("other_rate", False)


def test_min_seconds_replaces_the_receptive_field(corpus: Path) -> None:
    _, report = run(corpus, AudioConfig(min_seconds=0.75), labels=None)
    too_short = sorted(p.path for p in report.problems if p.rule == "too_short")
    assert too_short == ["good2.flac", "short.wav"]  # 0.5 s and 0.025 s - 1 sample
    _, report = run(corpus, AudioConfig(), labels=None)
    assert [p.path for p in report.problems if p.rule == "too_short"] == ["short.wav"]


def test_the_receptive_field_is_the_conv_stacks() -> None:
    from speechbs.data.validate import RECEPTIVE_FIELD_SAMPLES
    from speechbs.models.encoder_config import BASE_CONV
    from speechbs.models.frames import receptive_field_samples

    assert RECEPTIVE_FIELD_SAMPLES == receptive_field_samples(BASE_CONV)


def test_header_mismatch_and_stale_rates(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", 1000)
    write_wav(tmp_path / "b.wav", 1000)
    manifest = Manifest(tmp_path, ["a.wav", "b.wav"], [999, 1000], [16_000, 8_000])
    report = validate_manifest(manifest, AudioConfig())
    assert [(p.path, p.rule) for p in report.problems] == [("a.wav", "header_mismatch"),
                                                          ("b.wav", "header_mismatch")]
    assert "manifest says 1000 samples at 8000 Hz" in str(report.problems[1])


def test_default_cli_writes_cleaned_manifest_with_aligned_labels(corpus: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert cli(["validate", str(corpus), "--labels", "ltr", "--set", "audio.max_seconds=2"]) == 0
    out = capsys.readouterr().out
    assert "13 utterances, 4 usable, 9 skipped, 2 warnings" in out
    assert "note: no .rates sidecar" in out  # eight.wav's duration was wrong in the input
    assert "corrupt.flac: unreadable: cannot read the audio header" in out
    cleaned = read_manifest(corpus.with_name("m.clean.tsv"))
    assert cleaned.paths == ["good.wav", "good2.flac", "stereo.wav", "eight.wav"]
    assert cleaned.sample_rates_hz.tolist() == [16_000, 16_000, 16_000, 8_000]
    assert read_labels(cleaned, "wrd") == ["HELLO", "IT'S", "A", "A"]
    assert read_labels(cleaned, "ltr")[1] == "I T ' S |"
    assert cli(["validate", str(corpus.with_name("m.clean.tsv")), "--labels", "ltr", "--strict"]) == 0


def test_strict_exits_2_listing_problems_and_writes_nothing(corpus: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert cli(["validate", str(corpus), "--labels", "wrd", "--strict", "--max-listed", "0"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "zero.wav: empty: 0 samples (skipped)" in captured.out
    assert "untranscribed.wav: missing_transcript" in captured.out
    assert not corpus.with_name("m.clean.tsv").exists()


def test_misaligned_labels_and_bad_settings_are_errors_not_tracebacks(corpus: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    corpus.with_suffix(".wrd").write_text("ONE LINE\n")
    assert cli(["validate", str(corpus), "--labels", "wrd"]) == 2
    assert cli(["validate", str(corpus), "--set", "audio.on_other_rate=maybe"]) == 2
    err = capsys.readouterr().err
    assert "m.wrd has 1 lines" in err and "audio.on_other_rate" in err and "Traceback" not in err


def test_labels_in_a_label_dir_are_found_by_validate_and_by_training(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from speechbs.configio import load_config
    from speechbs.tasks.ctc import label_lines

    audio, labels = tmp_path / "audio", tmp_path / "labels"
    audio.mkdir()
    labels.mkdir()
    for name in ("a.wav", "b.wav"):
        write_wav(audio / name, 16_000)
    tsv = tmp_path / "train.tsv"
    write_manifest(Manifest(audio, ["a.wav", "b.wav"], [16_000, 16_000]), tsv)
    write_labels(["HELLO", "WORLD"], labels / "train.tsv")  # labels/train.ltr, labels/train.wrd
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nlabels = "ltr"\nlabel_dir = "{labels}"\n')

    assert cli(["validate", str(tsv), "--labels", "ltr", "--label-dir", str(labels), "--strict"]) == 0
    assert cli(["validate", str(tsv), "--labels", "ltr", "--recipe", str(recipe)]) == 0
    assert read_labels(read_manifest(tmp_path / "train.clean.tsv"), "ltr", labels) == ["H E L L O |", "W O R L D |"]
    assert label_lines(str(tsv), load_config(recipe).data) == ["H E L L O |", "W O R L D |"]

    assert cli(["validate", str(tsv), "--labels", "ltr"]) == 2  # beside the manifest there are none
    assert cli(["validate", str(tsv), "--labels", "ltr", "--label-dir", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert f"label file {tmp_path / 'train.ltr'} does not exist; it must sit beside {tsv}" in err
    assert f"label file {tmp_path / 'elsewhere' / 'train.ltr'} does not exist" in err


def test_vocabulary_from_a_fairseq_dict(tmp_path: Path) -> None:
    (tmp_path / "dict.ltr.txt").write_text("| 100\nE 50\nH 10\nL 9\nO 8\n")
    vocab = read_vocab(tmp_path / "dict.ltr.txt")
    assert vocab.is_letters and vocab.unknown("H E L L O |", "ltr") == []
    assert vocab.unknown("H E L P |", "ltr") == ["P"] and vocab.unknown("HELP ME", "wrd") == ["M", "P"]
    words = Vocabulary(frozenset({"YES", "NO"}))
    assert words.unknown("Y E S | M A Y B E |", "ltr") == ["MAYBE"]
    with pytest.raises(DataError, match="does not exist"):
        read_vocab(tmp_path / "nope.txt")


def test_decode_finds_corrupt_data_behind_a_valid_header(tmp_path: Path) -> None:
    sf.write(tmp_path / "ok.flac", np.random.default_rng(1).standard_normal(48_000).astype(np.float32) * 0.1,
             16_000)
    data = (tmp_path / "ok.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    manifest = Manifest(tmp_path, ["ok.flac", "cut.flac"], [48_000, 48_000])
    assert validate_manifest(manifest, AudioConfig()).ok  # the header alone looks fine
    report = validate_manifest(manifest, AudioConfig(), decode=True)
    assert [(p.path, p.rule) for p in report.problems] == [("cut.flac", "unreadable")]


def test_raise_if_bad_for_training(corpus: Path) -> None:
    _, report = run(corpus, AudioConfig(), labels=None)
    with pytest.raises(DataError, match="corrupt.flac: unreadable"):
        report.raise_if_bad()
    manifest = read_manifest(corpus)
    write_cleaned(manifest, report, corpus.with_name("c.tsv"))
    cleaned = read_manifest(corpus.with_name("c.tsv"))
    validate_manifest(cleaned, AudioConfig()).raise_if_bad()


def test_real_digits_are_usable_with_warnings(digits_dir: Path, tmp_path: Path) -> None:
    assert cli(["manifest", str(digits_dir / "recordings"), "--transcripts", str(digits_dir / "transcripts.txt"),
                "--out", str(tmp_path), "--check", "--strict"]) == 0
    manifest = read_manifest(tmp_path / "train.tsv")
    report = validate_manifest(manifest, AudioConfig(), labels=read_labels(manifest, "ltr"))
    assert report.ok and len(report.warnings) == 3000
    assert {p.rule for p in report.warnings} == {"other_rate"}
