"""The in-repo ARPA writer and lexicon, and LM beam search through flashlight-text."""

from __future__ import annotations

import math

import pytest
import torch

from speechbs.asr.lm import arpa_words, write_arpa, write_lexicon
from speechbs.asr.vocab import BLANK, build_vocab

SENTENCES = ["HELLO WORLD", "HELLO THERE", "THE WORLD IS BIG", "HELLO BIG WORLD"]


def _read_arpa(path):
    probs, backoffs, order = {}, {}, 0
    for line in path.read_text().splitlines():
        if line.endswith("-grams:"):
            order = int(line[1])
        elif order and "\t" in line:
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            probs[gram] = 10 ** float(fields[0])
            if len(fields) > 2:
                backoffs[gram] = 10 ** float(fields[2])
    return probs, backoffs


def _p(gram, probs, backoffs):
    if gram in probs:
        return probs[gram]
    if len(gram) == 1:
        return probs[("<unk>",)]
    return backoffs.get(gram[:-1], 1.0) * _p(gram[1:], probs, backoffs)


def test_arpa_distributions_sum_to_one(tmp_path):
    path = write_arpa(SENTENCES, tmp_path / "lm.arpa", order=3)
    probs, backoffs = _read_arpa(path)
    words = ["HELLO", "WORLD", "THERE", "THE", "IS", "BIG", "</s>", "<unk>"]
    for context in [(), ("<s>",), ("HELLO",), ("<s>", "HELLO"), ("BIG",), ("IS", "BIG")]:
        total = sum(_p(context + (w,), probs, backoffs) for w in words)
        assert math.isclose(total, 1.0, rel_tol=1e-4), (context, total)
    assert set(arpa_words(path)) == {"HELLO", "WORLD", "THERE", "THE", "IS", "BIG"}


def _emissions(text: str, vocab, confusions: dict[int, tuple[str, str]]) -> torch.Tensor:
    """Log-probs: one peaked frame per letter with a blank frame after each; frame i may be split 55/45."""
    table = vocab.index()
    rows = []
    for i, letter in enumerate(text.replace(" ", "|") + "|"):
        row = torch.full((len(vocab),), 1e-4)
        if i in confusions:
            best, second = confusions[i]
            row[table[best]], row[table[second]] = 0.55, 0.45
        else:
            row[table[letter]] = 1.0
        rows.append(row)
        blank = torch.full((len(vocab),), 1e-4)
        blank[BLANK] = 1.0
        rows.append(blank)
    probs_TV = torch.stack(rows)
    return (probs_TV / probs_TV.sum(-1, keepdim=True)).log()


def test_beam_search_with_lm_fixes_what_greedy_gets_wrong(tmp_path):
    pytest.importorskip("flashlight.lib.text")
    from speechbs.asr.ctc import greedy_ids
    from speechbs.asr.decode import BeamDecoder, BeamSettings

    vocab, _ = build_vocab([" ".join(s.replace(" ", "|")) + " |" for s in SENTENCES] + ["U"])
    lprobs_TV = _emissions("HELLO WORLD", vocab, {7: ("U", "O")})  # greedy hears "WURLD"
    greedy = vocab.to_words(greedy_ids(lprobs_TV[None], torch.tensor([lprobs_TV.shape[0]]))[0])
    assert greedy == "HELLO WURLD"
    lm = write_arpa(SENTENCES, tmp_path / "lm.arpa", order=3)
    lexicon = write_lexicon({w for s in SENTENCES for w in s.split()}, tmp_path / "lexicon.txt")
    assert lexicon.read_text().splitlines()[0] == "BIG\tB I G |"
    beam = BeamDecoder(vocab, BeamSettings(beam=20, lm_weight=1.0, word_score=0.0), lm=str(lm), lexicon=str(lexicon))
    assert beam(lprobs_TV) == "HELLO WORLD"
    # Without a lexicon file the LM's own words are spelled out.
    assert BeamDecoder(vocab, BeamSettings(beam=20), lm=str(lm), lexicon_dir=tmp_path)(lprobs_TV) == "HELLO WORLD"
    # Lexicon-free beam without an LM agrees with greedy on peaked emissions.
    assert BeamDecoder(vocab, BeamSettings(beam=8))(lprobs_TV) == greedy
