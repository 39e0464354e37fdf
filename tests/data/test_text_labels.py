"""``speechbs manifest --label-from-text``: probe labels derived from transcripts, and the yes/no corpus's tasks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from speechbs.cli import main as cli
from speechbs.data.manifest import read_manifest
from speechbs.data.text_labels import derive, parse_rule
from speechbs.errors import DataError
from tests.data.test_manifest import write_wav


def labels(spec: str, text: str) -> str | None:
    return parse_rule(spec).label(text)


def test_each_rule_labels_a_transcript() -> None:
    text = "NO YES YES NO YES"
    assert labels("word=1:x", text) == "NO" and labels("word=-1:x", text) == "YES"
    assert labels("word=6:x", text) is None
    assert labels("count=yes:x", text) == "3" and labels("count=MAYBE:x", text) == "0"
    assert labels("has=yes:x", text) == "yes" and labels("has=maybe:x", text) == "no"
    assert labels("most=YES,NO:x", text) == "YES"
    assert labels("most=YES,NO:x", "YES NO") == "tie" and labels("most=A,B:x", text) == "none"


@pytest.mark.parametrize("spec", ["most=YES,NO", "word=one:x", "colour=RED:x", "count=A,B:x",
                                  "has=two words:x", "word=1:wrd", "word=1:a.b", "count=:x"])
def test_malformed_rules_are_one_line_errors(spec: str) -> None:
    with pytest.raises(DataError, match="RULE:EXT") as error:
        parse_rule(spec)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="counted from 1"):
        parse_rule("word=0:x")


def test_an_utterance_the_rule_cannot_label_is_named() -> None:
    with pytest.raises(DataError, match="b.wav has only 1 word,"):
        derive(parse_rule("word=2:x"), ["A B", "C"], ["a.wav", "b.wav"], "src")
    with pytest.raises(DataError, match="a.wav has no transcript"):
        derive(parse_rule("has=A:x"), [None], ["a.wav"], "src")


def test_manifest_writes_derived_label_files_per_split(tmp_path: Path, capsys) -> None:
    for name in ["s1", "s2", "s3"]:
        write_wav(tmp_path / "a" / f"{name}.wav", 500)
    (tmp_path / "text").write_text("s1 yes no no\ns2 yes yes no\ns3 no no yes\n")
    (tmp_path / "split").write_text("s1 train\ns2 test\ns3 train\n")
    base = ["manifest", str(tmp_path / "a"), "--transcripts", str(tmp_path / "text"),
            "--split-file", str(tmp_path / "split")]
    assert cli([*base, "--label-from-text", "most=YES,NO:most", "--label-from-text", "word=1:first",
                "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "train.most").read_text() == "NO\nNO\n"
    assert (tmp_path / "m" / "test.most").read_text() == "YES\n"
    assert (tmp_path / "m" / "train.first").read_text() == "YES\nNO\n"
    assert cli([*base, "--label-from-text", "word=1:x", "--label-from-text", "has=NO:x",
                "--out", str(tmp_path / "m2")]) == 2
    assert "extension 'x' twice" in capsys.readouterr().err
    assert cli(["manifest", str(tmp_path / "a"), "--label-from-text", "word=1:x", "--out", str(tmp_path / "m3")]) == 2
    assert "has none; give --transcripts" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()  # nothing written


def test_yesno_tasks_have_a_fixed_split_and_labels_from_the_file_names(yesno_dir: Path, tmp_path: Path) -> None:
    """docs/probes.md's yes/no tasks: the corpus's own alternating split, labels from the words in the name."""
    out = tmp_path / "yesno"
    assert cli(["manifest", str(yesno_dir / "waves_yesno"), "--transcripts", str(yesno_dir / "transcripts.txt"),
                "--split-file", str(yesno_dir / "manifest.tsv"), "--label-from-text", "most=YES,NO:most",
                "--label-from-text", "word=1:first", "--out", str(out)]) == 0
    with open(yesno_dir / "manifest.tsv", encoding="utf-8") as f:
        table = {row["utt_id"]: row["split"] for row in csv.DictReader(f, delimiter="\t")}
    for split in ("train", "test"):
        stems = [Path(p).stem for p in read_manifest(out / f"{split}.tsv").paths]
        assert len(stems) == 30 and all(table[s] == split for s in stems)
        words = [s.split("_") for s in stems]  # 1 = yes, 0 = no
        yes = [w.count("1") for w in words]
        assert (out / f"{split}.first").read_text().split() == ["YES" if w[0] == "1" else "NO" for w in words]
        assert (out / f"{split}.most").read_text().split() == [
            "YES" if n > 4 else "NO" if n < 4 else "tie" for n in yes]
    assert sorted(set((out / "test.most").read_text().split())) == ["NO", "YES", "tie"]
