"""The built-in corpus: manifests and labels line up, determinism, no-op rebuilds, the demo."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbs import cli
from speechbs.data import corpus, espeak
from speechbs.data.manifest import read_labels, read_manifest
from speechbs.errors import DataError, SpeechbsError

pytestmark = pytest.mark.skipif(espeak.unavailable_reason() is not None,
                                reason=str(espeak.unavailable_reason()))
TINY_MINUTES = 0.5


def build(root: Path, **kwargs) -> corpus.CorpusSummary:
    kwargs.setdefault("minutes", TINY_MINUTES)
    kwargs.setdefault("num_workers", 1)
    return corpus.build_corpus(root / "audio", root / "manifests", **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> corpus.CorpusSummary:
    return build(tmp_path_factory.mktemp("tiny"))


def test_tiny_corpus_manifests_and_labels_line_up(tiny: corpus.CorpusSummary) -> None:
    total_s = 0.0
    for split, tsv in tiny.manifests.items():
        manifest = read_manifest(tsv)
        assert len(manifest) >= 1
        assert manifest.root == tiny.audio_dir
        assert set(manifest.rates_hz(0)) == {16_000}
        words, letters = read_labels(manifest, "wrd"), read_labels(manifest, "ltr")
        for i, (wrd, ltr) in enumerate(zip(words, letters)):
            assert re.fullmatch(r"[A-Z'|]+( [A-Z'|]+)*", ltr), ltr
            assert "".join(ltr.split()).replace("|", " ").strip() == wrd
            info = sf.info(str(manifest.audio_path(i)))
            assert (info.frames, info.samplerate, info.channels) == (manifest.num_samples[i], 16_000, 1)
            assert info.format == "FLAC" and info.subtype == "PCM_16"
        total_s += manifest.seconds(16_000).sum()
    assert TINY_MINUTES * 60 <= total_s < TINY_MINUTES * 60 + 3 * corpus.MAX_SECONDS


def test_valid_and_test_voices_are_held_out(tiny: corpus.CorpusSummary) -> None:
    def variants(split: str) -> set[str]:
        return {path.rsplit("_", 1)[1].removesuffix(".flac")
                for path in read_manifest(tiny.manifests[split]).paths}

    assert variants("train").isdisjoint(variants("valid") | variants("test"))
    assert variants("valid").isdisjoint(variants("test"))


def test_probe_label_files_line_up_with_the_file_names(tiny: corpus.CorpusSummary) -> None:
    for split, tsv in tiny.manifests.items():
        manifest = read_manifest(tsv)
        accents, families = read_labels(manifest, "accent"), read_labels(manifest, "family")
        for path, accent, family in zip(manifest.paths, accents, families):
            speaker = path.split("_", 1)[1].removesuffix(".flac")
            assert speaker.startswith(accent + "_") and accent in corpus.ACCENTS
            variant = speaker.rsplit("_", 1)[1]
            assert family == {"d": "male", "m": "male", "f": "female", "k": "klatt"}[variant[0]]


def test_voice_labels_read_the_name_and_refuse_other_names() -> None:
    assert corpus.voice_labels("test/000003_en-gb-x-gbclan_klatt3.flac") == {"accent": "en-gb-x-gbclan",
                                                                           "family": "klatt"}
    assert corpus.voice_labels("train/000000_en-us_default.flac")["family"] == "male"
    assert corpus.voice_labels("valid/000001_en-029_f2.flac") == {"accent": "en-029", "family": "female"}
    with pytest.raises(DataError, match="not named like a built-in corpus file"):
        corpus.voice_labels("train/000000_fr_m1.flac")


def test_an_existing_corpus_gains_its_label_files_without_resynthesis(tiny: corpus.CorpusSummary) -> None:
    tsv = tiny.manifests["test"]
    expected = tsv.with_suffix(".accent").read_bytes()
    for ext in corpus.PROBE_LABELS:  # a corpus built before the label files existed
        for path in tsv.parent.glob(f"*.{ext}"):
            path.unlink()
    flac = next(tiny.audio_dir.rglob("*.flac"))
    before = flac.stat().st_mtime_ns
    again = corpus.build_corpus(tiny.audio_dir, tsv.parent, minutes=TINY_MINUTES, num_workers=1)
    assert not again.built_now and flac.stat().st_mtime_ns == before
    assert tsv.with_suffix(".accent").read_bytes() == expected
    assert all(label.is_file() for t in again.manifests.values() for label in corpus.write_probe_labels(t))


def test_metadata_records_settings_and_counts(tiny: corpus.CorpusSummary) -> None:
    meta = json.loads((tiny.audio_dir / corpus.METADATA_NAME).read_text())
    assert meta["complete"] and meta["settings"]["seed"] == 1
    assert meta["settings"]["minutes"] == TINY_MINUTES
    for split, info in meta["splits"].items():
        assert info["num_utterances"] == len(read_manifest(tiny.manifests[split]))


def files(summary: corpus.CorpusSummary) -> dict[str, bytes]:
    """Every FLAC and label file, and the manifests without their root line."""
    result = {str(p.relative_to(summary.audio_dir)): p.read_bytes()
              for p in sorted(summary.audio_dir.rglob("*.flac"))}
    for tsv in summary.manifests.values():
        for ext in ("ltr", "wrd", "rates", *corpus.PROBE_LABELS):
            result[tsv.with_suffix(f".{ext}").name] = tsv.with_suffix(f".{ext}").read_bytes()
        result[tsv.name] = b"\n".join(tsv.read_bytes().split(b"\n")[1:])
    return result


def test_same_seed_gives_identical_bytes_for_any_worker_count(
        tiny: corpus.CorpusSummary, tmp_path: Path) -> None:
    again = build(tmp_path / "two_workers", num_workers=2)
    assert files(again) == files(tiny)
    other_seed = build(tmp_path / "seed2", seed=2)
    assert files(other_seed) != files(tiny)


def test_same_settings_again_is_a_no_op(tiny: corpus.CorpusSummary) -> None:
    flac = next(tiny.audio_dir.rglob("*.flac"))
    before = flac.stat().st_mtime_ns
    again = corpus.build_corpus(tiny.audio_dir, tiny.manifests["train"].parent,
                                minutes=TINY_MINUTES, num_workers=1)
    assert not again.built_now
    assert flac.stat().st_mtime_ns == before


def test_other_settings_refuse_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = build(tmp_path, minutes=0.2)
    with pytest.raises(DataError, match="minutes 0.2 -> 0.3.*--force"):
        build(tmp_path, minutes=0.3)
    with pytest.raises(DataError, match="seed 1 -> 5"):
        build(tmp_path, minutes=0.2, seed=5)
    rebuilt = build(tmp_path, minutes=0.3, force=True)
    assert rebuilt.built_now and rebuilt.metadata["settings"]["minutes"] == 0.3
    left = {p.name for p in first.audio_dir.rglob("*.flac")}
    listed = {Path(p).name for tsv in rebuilt.manifests.values() for p in read_manifest(tsv).paths}
    assert left == listed  # the old corpus's files are gone, not mixed in


def test_refuses_a_folder_that_is_not_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="not a speechbs corpus"):
        build(tmp_path, force=True)
    assert (tmp_path / "audio" / "thesis.txt").read_text() == "precious"


def test_refuses_manifests_of_another_corpus(tmp_path: Path) -> None:
    build(tmp_path / "a", minutes=0.2)
    with pytest.raises(DataError, match="points at"):
        corpus.build_corpus(tmp_path / "b", tmp_path / "a" / "manifests", minutes=0.2, num_workers=1)


def test_noise_is_added_at_the_requested_snr() -> None:
    clean = corpus.plan_utterance(3, "train", 0, None)
    noisy = corpus.plan_utterance(3, "train", 0, (10.0, 10.0))
    assert noisy.snr_db == 10.0 and noisy.text == clean.text
    lead = int(clean.lead_s * corpus.SAMPLE_RATE_HZ)

    def decode(spec: corpus.UtteranceSpec) -> np.ndarray:
        return sf.read(io.BytesIO(corpus.render(spec)[0]))[0]

    assert np.all(decode(clean)[:lead] == 0)
    noise_rms = np.sqrt(np.mean(decode(noisy)[:lead] ** 2))
    expected = 10 ** ((noisy.level_dbfs - 10.0) / 20)
    assert 0.8 * expected < noise_rms < 1.2 * expected


def test_lengths_vary_and_are_skewed() -> None:
    specs = [corpus.plan_utterance(1, "train", i, None) for i in range(400)]
    num_words = np.array([len(s.text.transcript.split()) for s in specs])
    assert num_words.min() <= 4 and num_words.max() >= 25
    assert np.median(num_words) < np.mean(num_words)  # a long right tail, not uniform


def test_bad_settings_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(SpeechbsError, match="--minutes"):
        build(tmp_path, minutes=0)
    with pytest.raises(SpeechbsError, match="--snr-db"):
        corpus.parse_snr("loud")
    assert corpus.parse_snr("5:15") == (5.0, 15.0) and corpus.parse_snr("20") == (20.0, 20.0)


def test_missing_library_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(espeak, "unavailable_reason", lambda: "not installed; pip install espeakng-loader")
    with pytest.raises(SpeechbsError, match="pip install espeakng-loader"):
        build(tmp_path)


def test_corpus_command_reuses_and_protects_a_built_corpus(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    dirs = ["--audio-dir", str(tmp_path / "audio"), "--manifest-dir", str(tmp_path / "manifests")]
    assert cli.main(["demo", "--corpus-only", "--minutes", "0.2", "--workers", "1", *dirs]) == 0
    assert str(tmp_path / "manifests" / "train.tsv") in capsys.readouterr().out
    assert cli.main(["corpus", "--minutes", "0.2", "--workers", "1", *dirs]) == 0
    assert "already built" in capsys.readouterr().out
    assert cli.main(["corpus", "--minutes", "0.4", "--workers", "1", *dirs]) == 2
    assert "--force" in capsys.readouterr().err
