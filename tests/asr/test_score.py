"""WER/CER on hand-made cases, the score files, and the score command."""

from __future__ import annotations

import json

import pytest

from speechbs.asr import score

pytest.importorskip("jiwer")


def test_edit_distance():
    assert score.edit_distance("kitten", "sitting") == 3
    assert score.edit_distance("a b c".split(), "a c d".split()) == 2
    assert score.edit_distance([], ["x"]) == 1


def _levenshtein_by_hand(ref, hyp) -> int:
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def test_edit_distance_matches_the_textbook_recurrence_on_words_and_characters():
    import random

    rng = random.Random(0)
    words = ["a", "b", "the", "of", "ab", "ba", ""]  # "ab" vs "a" "b": words are compared whole
    for _ in range(300):
        ref = [rng.choice(words) for _ in range(rng.randint(0, 12))]
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 12))]
        assert score.edit_distance(ref, hyp) == _levenshtein_by_hand(ref, hyp)
        assert score.edit_distance(" ".join(ref), " ".join(hyp)) == _levenshtein_by_hand(" ".join(ref), " ".join(hyp))


def test_corpus_wer_sums_errors_before_dividing():
    summary, rows = score.score_texts(["A B C", "X Y"], ["A C D", "X Y Z"])
    # utterance 1: delete B, insert D (or substitute) = 2 errors / 3; utterance 2: insert Z = 1 / 2
    assert summary["num_words"] == 5
    assert summary["substitutions"] + summary["deletions"] + summary["insertions"] == 3
    assert summary["wer"] == pytest.approx(60.0)
    assert [r["errors"] for r in rows] == [2, 1]
    assert rows[1]["wer"] == pytest.approx(50.0)
    perfect, _ = score.score_texts(["HELLO WORLD"], ["HELLO WORLD"])
    assert perfect["wer"] == 0 and perfect["cer"] == 0


def test_empty_reference_counts_insertions():
    summary, rows = score.score_texts(["A", ""], ["A", "B"])
    assert summary["insertions"] == 1 and summary["num_empty_refs"] == 1
    assert summary["wer"] == pytest.approx(100.0)


def test_score_command_writes_files(tmp_path):
    (tmp_path / "ref.wrd").write_text("ONE TWO\nTHREE\n")
    (tmp_path / "hyp.wrd").write_text("ONE TOO\nTHREE\n")
    args = type("Args", (), {"dir": str(tmp_path), "ref": None, "hyp": None, "out": None})()
    assert score.main(args) == 0
    data = json.loads((tmp_path / "score.json").read_text())
    assert data["wer"] == pytest.approx(100 / 3) and data["num_utterances"] == 2
    assert (tmp_path / "score.md").read_text().startswith("| WER")
    assert len((tmp_path / "utterances.tsv").read_text().splitlines()) == 3


def test_mismatched_lines_are_a_user_error():
    from speechbs.errors import DataError

    with pytest.raises(DataError, match="line up"):
        score.score_texts(["A"], ["A", "B"])
