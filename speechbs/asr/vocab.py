"""The letter vocabulary of CTC fine-tuning, compatible with fairseq's ``dict.ltr.txt``.

fairseq's ``Dictionary`` puts four specials first, ``<s> <pad> </s> <unk>``
(indices 0-3), then the symbols of ``dict.ltr.txt`` (``SYMBOL COUNT`` per line,
most frequent first, ties by symbol). The CTC blank is index 0: fairseq's CTC
criterion uses ``<s>``'s slot as the blank and Hugging Face's wav2vec 2.0
vocabularies put their blank (named ``<pad>``) at 0 too, so a head trained here
lines up with either. ``|`` is the word boundary (fairseq ``libri_labels.py``).

Characters outside the vocabulary map to ``<unk>`` (fairseq's ``encode_line``
does the same) and are counted, so a label sequence keeps its length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechbs.atomic import write_text
from speechbs.data.manifest import WORD_BOUNDARY
from speechbs.errors import DataError
from speechbs.textio import read_text, require_file

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BLANK = 0
UNK = 3


@dataclass(frozen=True)
class Vocab:
    """Specials then letters; ``symbols[i]`` is output class i of the CTC head."""

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        assert self.symbols[: len(SPECIALS)] == SPECIALS, "a vocabulary starts with fairseq's four specials"

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def letters(self) -> tuple[str, ...]:
        return self.symbols[len(SPECIALS):]

    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, ltr_line: str) -> tuple[np.ndarray, int]:
        """A ``.ltr`` line (``H E L L O |``) -> (class ids int64, number of symbols mapped to ``<unk>``)."""
        table = self.index()
        ids = [table.get(unit, UNK) for unit in ltr_line.split()]
        num_oov = sum(1 for unit in ltr_line.split() if unit not in table)
        return np.asarray(ids, dtype=np.int64), num_oov

    def to_words(self, ids: Iterable[int]) -> str:
        """Class ids (already collapsed, blanks removed) -> words; specials are not written."""
        letters = [self.symbols[i] for i in ids if i >= len(SPECIALS)]
        return " ".join("".join(letters).replace(WORD_BOUNDARY, " ").split())

    def to_tensor(self) -> torch.Tensor:
        """The symbols as UTF-8 bytes (uint8), newline-separated: stored in the model's state dict."""
        return torch.frombuffer(bytearray("\n".join(self.symbols).encode("utf-8")), dtype=torch.uint8).clone()

    @staticmethod
    def from_tensor(data_N: torch.Tensor) -> Vocab:
        return Vocab(tuple(bytes(data_N.to(torch.uint8).tolist()).decode("utf-8").split("\n")))


def build_vocab(ltr_lines: Iterable[str]) -> tuple[Vocab, dict[str, int]]:
    """The vocabulary of some ``.ltr`` lines, most frequent symbol first (fairseq ``Dictionary.finalize``)."""
    counts = Counter(unit for line in ltr_lines for unit in line.split())
    for special in SPECIALS:
        counts.pop(special, None)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return Vocab(SPECIALS + tuple(s for s, _ in ordered)), dict(ordered)


def write_dict(vocab: Vocab, path: str | Path, counts: dict[str, int] | None = None) -> Path:
    """Write fairseq's ``dict.ltr.txt`` (the symbols after the specials, ``SYMBOL COUNT``)."""
    counts = counts or {}
    return write_text(Path(path), "".join(f"{s} {counts.get(s, 1)}\n" for s in vocab.letters))


def read_dict(path: str | Path) -> Vocab:
    """Read a fairseq ``dict.ltr.txt``; the four specials are added in front, as fairseq does."""
    path = require_file(path, "finetune.vocab", "(a fairseq dict.ltr.txt with 'SYMBOL COUNT' lines; leave it "
                                                "empty to build one from the training labels)")
    symbols: list[str] = []
    for number, line in enumerate(read_text(path, "finetune.vocab").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}")
        if fields[0] not in SPECIALS and fields[0] not in symbols:
            symbols.append(fields[0])
    if not symbols:
        raise DataError(f"{path} holds no symbols")
    return Vocab(SPECIALS + tuple(symbols))
