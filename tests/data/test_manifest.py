"""Manifest and label formats, transcript normalization, sources and splits, `speechbs manifest`."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbs.cli import main as cli
from speechbs.data.manifest import (Manifest, letters_to_words, read_labels, read_manifest,
                                    words_to_letters, write_labels, write_manifest)
from speechbs.data.sources import (collect, normalize_transcript, read_kaldi_transcripts,
                                   read_split_table, split_by_fraction)
from speechbs.errors import DataError

TRANSCRIPTS = {
    "19-198-0000": "NORTHANGER ABBEY",
    "19-198-0001": "THIS LITTLE WORK WAS FINISHED IN THE YEAR",
    "19-227-0000": "HELLO WORLD",
    "26-495-0000": "A B C",
    "26-495-0001": "IT'S OK",
}


def write_wav(path: Path, num_samples: int, rate_hz: int = 16_000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (num_samples,) if channels == 1 else (num_samples, channels)
    sf.write(path, np.full(shape, 0.1, np.float32), rate_hz)
    return path


def librispeech_tree(root: Path) -> dict[str, int]:
    """speaker/chapter/speaker-chapter-utt.flac + speaker-chapter.trans.txt; returns id -> samples."""
    lengths = {}
    for n, utt_id in enumerate(sorted(TRANSCRIPTS)):
        speaker, chapter, _ = utt_id.split("-")
        lengths[utt_id] = 1600 + 37 * n
        write_wav(root / speaker / chapter / f"{utt_id}.flac", lengths[utt_id])
    for speaker_chapter in {u.rsplit("-", 1)[0] for u in TRANSCRIPTS}:
        speaker, chapter = speaker_chapter.split("-")
        lines = [f"{u} {t}\n" for u, t in sorted(TRANSCRIPTS.items()) if u.startswith(speaker_chapter + "-")]
        (root / speaker / chapter / f"{speaker_chapter}.trans.txt").write_text("".join(lines))
    return lengths


def test_manifest_round_trip_with_one_rate_and_many(tmp_path: Path) -> None:
    one = Manifest(tmp_path, ["a.wav", "b/c.flac"], [10, 20], [8000, 8000])
    write_manifest(one, tmp_path / "x.tsv")
    assert (tmp_path / "x.rates").read_text() == "8000\n"
    back = read_manifest(tmp_path / "x.tsv")
    assert back.paths == one.paths and back.num_samples.tolist() == [10, 20]
    assert back.sample_rates_hz.tolist() == [8000, 8000] and back.root == tmp_path
    mixed = Manifest(tmp_path, ["a.wav", "b.wav"], [10, 20], [8000, 22050])
    write_manifest(mixed, tmp_path / "x.tsv")
    assert read_manifest(tmp_path / "x.tsv").sample_rates_hz.tolist() == [8000, 22050]
    assert read_manifest(tmp_path / "x.tsv").seconds(16_000).tolist() == [10 / 8000, 20 / 22050]
    write_manifest(Manifest(tmp_path, ["a.wav"], [10]), tmp_path / "x.tsv")
    assert not (tmp_path / "x.rates").exists()  # a stale sidecar would give wrong durations


def test_bad_manifest_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.tsv").write_text(f"{tmp_path}\na.wav\t12\nb.wav twelve\n")
    with pytest.raises(DataError, match="bad.tsv:3: expected"):
        read_manifest(tmp_path / "bad.tsv")


def test_letters_match_fairseq_libri_labels() -> None:
    for words in ["HELLO WORLD", "A", "IT'S OK NOW"]:
        fairseq = " ".join(list(words.replace(" ", "|"))) + " |"  # libri_labels.py
        assert words_to_letters(words) == fairseq
        assert letters_to_words(fairseq) == words
    assert words_to_letters("") == ""


def test_labels_must_line_up_with_the_manifest(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path, ["a.wav", "b.wav"], [1, 2])
    write_manifest(manifest, tmp_path / "m.tsv")
    write_labels(["HELLO", "WORLD"], tmp_path / "m.tsv")
    read = read_manifest(tmp_path / "m.tsv")
    assert read_labels(read, "ltr") == ["H E L L O |", "W O R L D |"]
    write_labels(["HELLO"], tmp_path / "m.tsv")
    with pytest.raises(DataError, match="m.wrd has 1 lines but .* has 2"):
        read_labels(read, "wrd")


@pytest.mark.parametrize("raw, expected", [
    ("Printing, in the only sense.", "PRINTING IN THE ONLY SENSE"),
    ("don\u2019t  twenty-five \"quoted\"", "DON'T TWENTY FIVE QUOTED"),
    ("In 1878; (yes)!", "IN 1878 YES"),  # digits are kept for validation to report
    ("...", ""),
])
def test_normalize_transcript(raw: str, expected: str) -> None:
    assert normalize_transcript(raw) == expected


def test_librispeech_tree_gives_aligned_manifest_and_labels(tmp_path: Path) -> None:
    lengths = librispeech_tree(tmp_path / "dev-clean")
    assert cli(["manifest", str(tmp_path / "dev-clean"), "--out", str(tmp_path / "out"), "--name", "dev"]) == 0
    manifest = read_manifest(tmp_path / "out" / "dev.tsv")
    assert len(manifest) == len(TRANSCRIPTS) and manifest.root == (tmp_path / "dev-clean").resolve()
    words, letters = read_labels(manifest, "wrd"), read_labels(manifest, "ltr")
    for path, num_samples, wrd, ltr in zip(manifest.paths, manifest.num_samples, words, letters):
        utt_id = Path(path).stem
        assert path == f"{utt_id.split('-')[0]}/{utt_id.split('-')[1]}/{utt_id}.flac"
        assert num_samples == lengths[utt_id] == sf.info(manifest.root / path).frames
        assert wrd == TRANSCRIPTS[utt_id] and ltr == words_to_letters(wrd)
    assert manifest.sample_rates_hz.tolist() == [16_000] * len(TRANSCRIPTS)


def test_directory_with_kaldi_transcripts_skips_and_reports_missing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    for name, n in [("a/one.wav", 800), ("b/two.wav", 900), ("three.wav", 1000), ("notes.txt", 0)]:
        if name.endswith(".wav"):
            write_wav(tmp_path / "audio" / name, n, 8000)
    (tmp_path / "text").write_text("one Hello, World!\ntwo it's 2 o'clock\nfour ORPHAN\n")
    args = ["manifest", str(tmp_path / "audio"), "--transcripts", str(tmp_path / "text"),
            "--out", str(tmp_path / "out")]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "1 transcripts name no audio file" in out and "1 audio files have no transcript" in out
    assert "three.wav: missing_transcript" in out
    manifest = read_manifest(tmp_path / "out" / "train.tsv")
    assert manifest.paths == ["a/one.wav", "b/two.wav"] and manifest.num_samples.tolist() == [800, 900]
    assert read_labels(manifest, "wrd") == ["HELLO WORLD", "IT'S 2 O'CLOCK"]
    assert cli(args + ["--check"]) == 0  # the digit is outside A-Z: skipped with the rule named
    assert "two.wav: unknown_chars: '2'" in capsys.readouterr().out
    assert read_labels(read_manifest(tmp_path / "out" / "train.tsv"), "wrd") == ["HELLO WORLD"]
    assert cli(args + ["--check", "--strict"]) == 2


def test_keep_text_leaves_case_for_validation_to_flag(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    write_wav(tmp_path / "audio" / "u1.wav", 1600)
    (tmp_path / "text").write_text("u1 Hello there\n")
    base = ["manifest", str(tmp_path / "audio"), "--transcripts", str(tmp_path / "text"),
            "--out", str(tmp_path / "out")]
    assert cli(base + ["--keep-text"]) == 0
    assert read_labels(read_manifest(tmp_path / "out" / "train.tsv"), "wrd") == ["Hello there"]
    assert cli(base + ["--keep-text", "--check", "--strict"]) == 2
    assert "u1.wav: unknown_chars" in capsys.readouterr().out
    assert cli(base + ["--check", "--strict"]) == 0


def test_list_source_and_tsv_source(tmp_path: Path) -> None:
    write_wav(tmp_path / "x" / "a.wav", 700)
    write_wav(tmp_path / "y" / "b.wav", 1700, 22050)
    (tmp_path / "list.txt").write_text(f"x/a.wav\tfirst one\n{tmp_path / 'y' / 'b.wav'}\tSecond\n")
    collected = collect(tmp_path / "list.txt")
    assert collected.root == tmp_path and collected.rel_paths == ["x/a.wav", "y/b.wav"]
    assert cli(["manifest", str(tmp_path / "list.txt"), "--out", str(tmp_path / "m")]) == 0
    manifest = read_manifest(tmp_path / "m" / "train.tsv")
    assert manifest.sample_rates_hz.tolist() == [16_000, 22_050]
    assert read_labels(manifest, "wrd") == ["FIRST ONE", "SECOND"]
    # An existing manifest is re-counted from the headers, its labels carried along.
    write_wav(tmp_path / "x" / "a.wav", 650)
    assert cli(["manifest", str(tmp_path / "m" / "train.tsv"), "--out", str(tmp_path / "m2")]) == 0
    again = read_manifest(tmp_path / "m2" / "train.tsv")
    assert again.num_samples.tolist() == [650, 1700] and read_labels(again, "wrd") == ["FIRST ONE", "SECOND"]


def test_valid_percent_is_fairseqs_seeded_draw(tmp_path: Path) -> None:
    rand = random.Random(42)
    fairseq = ["train" if rand.random() > 0.3 else "valid" for _ in range(200)]
    assert split_by_fraction(200, 0.3, 42) == fairseq
    assert split_by_fraction(5, 0.0, 42) == ["train"] * 5
    with pytest.raises(DataError, match="fraction"):
        split_by_fraction(5, 30, 42)
    for i in range(40):
        write_wav(tmp_path / "a" / f"u{i:02d}.wav", 500 + i)
    assert cli(["manifest", str(tmp_path / "a"), "--valid-percent", "0.25", "--out", str(tmp_path / "m")]) == 0
    train, valid = (read_manifest(tmp_path / "m" / f"{s}.tsv") for s in ("train", "valid"))
    expected = split_by_fraction(40, 0.25, 42)
    assert valid.paths == [f"u{i:02d}.wav" for i in range(40) if expected[i] == "valid"]
    assert len(train) + len(valid) == 40


def test_split_file_with_header_or_pairs(tmp_path: Path) -> None:
    for name in ["s1", "s2", "s3", "s4"]:
        write_wav(tmp_path / "a" / f"{name}.wav", 500)
    (tmp_path / "meta.tsv").write_text("utt_id\ttext\tsplit\ns1\tsome text\ttrain\ns2\tx\ttest\n"
                                       "s3\ty z\ttrain\n")
    assert read_split_table(tmp_path / "meta.tsv") == {"s1": "train", "s2": "test", "s3": "train"}
    assert cli(["manifest", str(tmp_path / "a"), "--split-file", str(tmp_path / "meta.tsv"),
                "--out", str(tmp_path / "m")]) == 0
    assert read_manifest(tmp_path / "m" / "train.tsv").paths == ["s1.wav", "s3.wav"]
    assert read_manifest(tmp_path / "m" / "test.tsv").paths == ["s2.wav"]
    (tmp_path / "pairs").write_text("s1 dev\na/s4.wav eval\n")
    assert read_split_table(tmp_path / "pairs") == {"s1": "dev", "s4": "eval"}


def test_label_columns_of_the_split_file_become_label_files_per_split(tmp_path: Path, capsys) -> None:
    for name in ["s1", "s2", "s3"]:
        write_wav(tmp_path / "a" / f"{name}.wav", 500)
    (tmp_path / "meta.tsv").write_text("utt_id\tspeaker\tsplit\ns1\tann\ttrain\ns2\tbob\ttest\ns3\tbob\ttrain\n")
    assert cli(["manifest", str(tmp_path / "a"), "--split-file", str(tmp_path / "meta.tsv"),
                "--label-column", "speaker:spk", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "train.spk").read_text() == "ann\nbob\n"
    assert (tmp_path / "m" / "test.spk").read_text() == "bob\n"
    (tmp_path / "meta.tsv").write_text("utt_id\tspeaker\tsplit\ns1\tann\ttrain\ns2\t\ttest\ns3\tbob\ttrain\n")
    assert cli(["manifest", str(tmp_path / "a"), "--split-file", str(tmp_path / "meta.tsv"),
                "--label-column", "speaker:spk", "--out", str(tmp_path / "m2")]) == 2
    assert "column 'speaker' has no value for s2.wav" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()  # nothing written
    assert cli(["manifest", str(tmp_path / "a"), "--split-file", str(tmp_path / "meta.tsv"),
                "--label-column", "speaker"]) == 2
    assert "give COLUMN:EXT" in capsys.readouterr().err


def test_source_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["manifest", str(tmp_path / "empty")]) == 2
    with pytest.raises(DataError, match="no audio files"):
        collect(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        collect(tmp_path / "missing")
    (tmp_path / "dup").write_text("a X\na Y\n")
    with pytest.raises(DataError, match="dup:2: utterance id 'a' appears twice"):
        read_kaldi_transcripts(tmp_path / "dup")


def test_free_spoken_digit_manifest_matches_headers(digits_dir: Path, tmp_path: Path) -> None:
    start_s = time.perf_counter()
    assert cli(["manifest", str(digits_dir / "recordings"), "--transcripts",
                str(digits_dir / "transcripts.txt"), "--out", str(tmp_path)]) == 0
    elapsed_s = time.perf_counter() - start_s
    manifest = read_manifest(tmp_path / "train.tsv")
    assert len(manifest) == 3000 and elapsed_s < 10
    for i in range(0, 3000, 7):
        assert manifest.num_samples[i] == sf.info(manifest.audio_path(i)).frames
    assert (tmp_path / "train.rates").read_text() == "8000\n"
    words = read_labels(manifest, "wrd")
    digit_words = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
    assert all(w == digit_words[int(p[0])] for p, w in zip(manifest.paths, words))
    assert manifest.seconds(16_000).sum() == pytest.approx(1312.3, abs=0.1)


def test_yesno_split_column(yesno_dir: Path, tmp_path: Path) -> None:
    assert cli(["manifest", str(yesno_dir / "waves_yesno"), "--transcripts", str(yesno_dir / "transcripts.txt"),
                "--split-file", str(yesno_dir / "manifest.tsv"), "--out", str(tmp_path), "--check"]) == 0
    train, test = (read_manifest(tmp_path / f"{s}.tsv") for s in ("train", "test"))
    assert len(train) == len(test) == 30
    for manifest in (train, test):
        for path, wrd in zip(manifest.paths, read_labels(manifest, "wrd")):
            assert wrd.split() == ["YES" if b == "1" else "NO" for b in Path(path).stem.split("_")]


def test_ljspeech_text_is_normalized(ljspeech_dir: Path, tmp_path: Path) -> None:
    assert cli(["manifest", str(ljspeech_dir / "wavs"), "--transcripts", str(ljspeech_dir / "transcripts.txt"),
                "--out", str(tmp_path), "--check", "--strict"]) == 0
    manifest = read_manifest(tmp_path / "train.tsv")
    assert len(manifest) == 32 and set(manifest.sample_rates_hz.tolist()) == {22_050}
    words = read_labels(manifest, "wrd")
    assert words[1] == "IN BEING COMPARATIVELY MODERN"
    assert all(set(w) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ") for w in words)


def test_directory_walk_follows_links_once(tmp_path: Path) -> None:
    write_wav(tmp_path / "a" / "sub" / "x.wav", 500)
    write_wav(tmp_path / "a" / "top.flac", 500)
    (tmp_path / "a" / "sub" / "loop").symlink_to(tmp_path / "a")
    write_wav(tmp_path / "other" / "y.WAV", 600)
    (tmp_path / "a" / "linked").symlink_to(tmp_path / "other")
    assert collect(tmp_path / "a", "dir").rel_paths == ["linked/y.WAV", "sub/x.wav", "top.flac"]
