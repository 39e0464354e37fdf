"""A small word n-gram LM writer (ARPA) and lexicon files, for tests and tiny demos.

Real systems use KenLM's ``lmplz`` (modified Kneser-Ney) on millions of
sentences; this writer is interpolated absolute discounting (Ney et al. 1994)
on raw counts, D = 0.5, written in ARPA backoff form: each listed n-gram
carries its interpolated probability and each context h the weight
lambda(h) = D * N1+(h .) / c(h .), so the model sums to one. The lowest
order interpolates with a uniform distribution over the words, ``</s>`` and
``<unk>``. The files load in KenLM and flashlight-text.

A lexicon maps each word to its letter spelling in the fine-tuning vocabulary,
ending in the word boundary: ``HELLO<TAB>H E L L O |`` (fairseq / wav2letter).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from speechbs.atomic import write_text
from speechbs.data.manifest import WORD_BOUNDARY
from speechbs.errors import DataError
from speechbs.textio import read_text, require_file

BOS, EOS, UNK_WORD = "<s>", "</s>", "<unk>"


def count_ngrams(sentences: Iterable[str], order: int) -> list[Counter]:
    """counts[k-1][(w1..wk)] for k = 1..order, sentences padded with <s> and </s>."""
    counts = [Counter() for _ in range(order)]
    for sentence in sentences:
        words = [BOS, *sentence.split(), EOS]
        for k in range(1, order + 1):
            for i in range(len(words) - k + 1):
                gram = tuple(words[i: i + k])
                if gram != (BOS,):
                    counts[k - 1][gram] += 1
    return counts


def write_arpa(sentences: Iterable[str], path: str | Path, order: int = 3, discount: float = 0.5) -> Path:
    """Count n-grams of ``sentences`` (one per item, words separated by spaces) and write an ARPA file."""
    if order < 1 or not 0 < discount < 1:
        raise DataError(f"n-gram order must be >= 1 and the discount in (0, 1); got {order}, {discount}")
    counts = count_ngrams(list(sentences), order)
    if not counts[0]:
        raise DataError("no words to build a language model from")
    probs: list[dict[tuple, float]] = [dict() for _ in range(order)]
    backoffs: list[dict[tuple, float]] = [dict() for _ in range(order)]
    # Unigrams: discounted counts plus the freed mass spread uniformly (over <unk> too).
    total = sum(counts[0].values())
    vocab = sorted(gram[0] for gram in counts[0]) + [UNK_WORD]
    uniform = discount * len(counts[0]) / total / len(vocab)
    for word in vocab:
        probs[0][(word,)] = max(counts[0].get((word,), 0) - discount, 0) / total + uniform
    for k in range(2, order + 1):
        context_total: dict[tuple, int] = defaultdict(int)
        context_types: dict[tuple, int] = defaultdict(int)
        for gram, c in counts[k - 1].items():
            context_total[gram[:-1]] += c
            context_types[gram[:-1]] += 1
        for context, c in context_total.items():
            backoffs[k - 2][context] = discount * context_types[context] / c
        for gram, c in counts[k - 1].items():
            lower = _prob(gram[1:], probs, backoffs)
            probs[k - 1][gram] = (c - discount) / context_total[gram[:-1]] + backoffs[k - 2][gram[:-1]] * lower
    return write_text(Path(path), _format(probs, backoffs, order))


def _prob(gram: tuple, probs: list[dict], backoffs: list[dict]) -> float:
    """p(w | h) of the backoff model built so far (lower orders complete)."""
    k = len(gram)
    if k == 1:
        return probs[0].get(gram, probs[0][(UNK_WORD,)])
    if gram in probs[k - 1]:
        return probs[k - 1][gram]
    return backoffs[k - 2].get(gram[:-1], 1.0) * _prob(gram[1:], probs, backoffs)


def _format(probs: list[dict], backoffs: list[dict], order: int) -> str:
    lines = ["", "\\data\\"]
    sizes = [len(probs[0]) + 1] + [len(p) for p in probs[1:]]  # +1: <s> is listed with p = 0
    lines += [f"ngram {k}={n}" for k, n in enumerate(sizes, start=1)]
    for k in range(1, order + 1):
        lines += ["", f"\\{k}-grams:"]
        entries = sorted(probs[k - 1].items())
        if k == 1:
            entries = [((BOS,), 0.0)] + entries
        for gram, p in entries:
            logp = -99.0 if p <= 0 else math.log10(p)
            line = f"{logp:.6f}\t{' '.join(gram)}"
            if k < order and gram in backoffs[k - 1]:
                line += f"\t{math.log10(backoffs[k - 1][gram]):.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def write_lexicon(words: Iterable[str], path: str | Path) -> Path:
    """``WORD<TAB>W O R D |`` per distinct word (sorted)."""
    unique = sorted({w for w in words if w and w not in (BOS, EOS, UNK_WORD)})
    if not unique:
        raise DataError("no words to write a lexicon for")
    return write_text(Path(path), "".join(f"{w}\t{' '.join(w)} {WORD_BOUNDARY}\n" for w in unique))


def arpa_words(path: str | Path) -> list[str]:
    """The unigram words of an ARPA file (to write a lexicon when none is given)."""
    path = require_file(path, "language model")
    words, inside = [], False
    for line in read_text(path, "language model").splitlines():
        if line.startswith("\\1-grams:"):
            inside = True
        elif line.startswith("\\"):
            inside = False
        elif inside and line.strip():
            words.append(line.split("\t")[1] if "\t" in line else line.split()[1])
    return [w for w in words if w not in (BOS, EOS, UNK_WORD)]
