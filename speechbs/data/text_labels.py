"""Probe labels derived from each utterance's transcript: ``speechbs manifest --label-from-text RULE:EXT``.

A corpus often carries its labels in what is said rather than in a table: the yes/no corpus
names each file by its 8 words, the spoken digits by their digit. A rule turns a
(normalized) transcript into one label; the rules are a small fixed set, so a recipe says
what it derives without any code:

- ``word=N``: the N-th word (1-based; ``-1`` is the last): ``word=1`` on ``NO YES YES`` -> ``NO``
- ``count=WORD``: how many times WORD is said: ``count=YES`` -> ``2``
- ``has=WORD``: whether WORD is said at all (``yes`` / ``no``): keyword spotting
- ``most=A,B,...``: which of the words is said most often, ``tie`` when several share the
  highest count, ``none`` when none is said: ``most=YES,NO`` -> ``YES``

Words are compared after the manifest's own normalization (upper case, punctuation dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

from speechbs.data.sources import normalize_transcript
from speechbs.errors import DataError

RULES = ("word", "count", "has", "most")
RESERVED_EXTS = ("tsv", "rates", "ltr", "wrd")
"""Extensions a manifest's own files use; a label file may not take them."""


@dataclass(frozen=True)
class TextRule:
    """One parsed ``--label-from-text`` item: the rule, its argument and the label file's extension."""

    kind: str
    words: tuple[str, ...]
    position: int
    ext: str

    def label(self, transcript: str) -> str | None:
        """The label of one transcript; None when the rule does not apply (too few words)."""
        said = transcript.split()
        if self.kind == "word":
            index = self.position - 1 if self.position > 0 else self.position
            return said[index] if -len(said) <= index < len(said) else None
        counts = [said.count(word) for word in self.words]
        if self.kind == "count":
            return str(counts[0])
        if self.kind == "has":
            return "yes" if counts[0] else "no"
        top = max(counts)
        if top == 0:
            return "none"
        return self.words[counts.index(top)] if counts.count(top) == 1 else "tie"


def parse_rule(spec: str) -> TextRule:
    """``most=YES,NO:most`` -> TextRule; a malformed item is a one-line error that shows the forms."""
    body, _, ext = spec.rpartition(":")
    kind, _, arg = body.partition("=")
    usage = (f"--label-from-text {spec!r}: give RULE:EXT with RULE one of word=N, count=WORD, has=WORD, "
             f"most=WORD,WORD (e.g. most=YES,NO:most); EXT is the label file's extension, not "
             f"{', '.join(RESERVED_EXTS)}")
    if kind not in RULES or not arg or not ext or "/" in ext or "." in ext or ext in RESERVED_EXTS:
        raise DataError(usage)
    if kind == "word":
        try:
            position = int(arg)
        except ValueError:
            raise DataError(usage) from None
        if position == 0:
            raise DataError(f"--label-from-text {spec!r}: words are counted from 1 (and -1 is the last), not 0")
        return TextRule(kind, (), position, ext)
    words = tuple(normalize_transcript(w) for w in arg.split(",") if w.strip())
    if not words or (kind != "most" and len(words) != 1) or any(len(w.split()) != 1 for w in words):
        raise DataError(usage)
    return TextRule(kind, words, 0, ext)


def derive(rule: TextRule, transcripts: list[str | None], names: list[str], where: str) -> list[str]:
    """The rule's label for every utterance; one without a transcript, or where it does not apply, is an error."""
    labels = []
    for name, text in zip(names, transcripts):
        label = None if text is None else rule.label(text)
        if label is None:
            num_words = 0 if text is None else len(text.split())
            why = "has no transcript" if text is None else f"has only {num_words} word{'s' * (num_words != 1)}"
            raise DataError(f"{where}: {name} {why}, so the {rule.kind} rule of --label-from-text gives it "
                            f"no label; every written utterance needs one (drop it or choose another rule)")
        labels.append(label)
    return labels
