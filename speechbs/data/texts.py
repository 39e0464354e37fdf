"""Composed English text for the built-in corpus: a small vocabulary and a toy grammar.

Every utterance is a pair: what eSpeak NG is asked to say (lower case, with
sentence punctuation for intonation) and its transcript (upper case words,
only A-Z and the apostrophe, so it fits the letter vocabulary of
``.ltr`` labels). Numbers are spelled out as words in both, so what is said
is exactly what is written.

The vocabulary is small (about 300 words) on purpose: a tiny model can learn
it, and a CTC model trained on it gives readable output in a demo. It is not a
language model of English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ADJECTIVES = (
    "big small old new red green blue yellow black white quiet loud warm cold dark bright "
    "happy tired quick slow tall short heavy light clean empty soft round wet dry young brave"
).split()
NOUNS = (
    "dog cat bird horse cow fish man woman child teacher doctor farmer driver baker sailor "
    "friend family house garden river road bridge boat train car bus window door table chair "
    "book letter box cup bottle apple bread cake tree flower field hill forest village city "
    "market station kitchen school shop lamp clock key coat hat shoe ball song story picture"
).split()
PLURALS = {"man": "men", "woman": "women", "child": "children", "fish": "fish", "city": "cities",
           "family": "families", "box": "boxes", "bus": "buses", "story": "stories"}
TRANSITIVE_PAST = (
    "found saw carried painted opened closed washed moved bought sold watched followed "
    "cleaned fixed built dropped lifted pushed pulled kept left took brought gave made liked"
).split()
INTRANSITIVE_PAST = (
    "slept waited laughed smiled walked ran stopped listened worked sang danced arrived "
    "stayed jumped rested"
).split()
ADVERBS = "quickly slowly quietly early late again today yesterday together outside".split()
PREPOSITIONS = "near behind under beside inside across above below".split()
PLACES = ("at home", "at the station", "in the garden", "by the river", "on the hill",
          "in the kitchen", "at school", "in the village", "on the bridge", "at the market")
PRONOUNS = "i you we they he she".split()
NAMES = "anna peter maria john sarah david emma thomas laura james lucy paul".split()
QUESTION_WORDS = "where when why how".split()
SHORT_PHRASES = ("yes", "no", "thank you", "good morning", "good night", "hello", "of course",
                 "not today", "right now", "see you soon", "well done", "i don't know",
                 "it's fine", "we'll see", "that's right", "let's go")
UNITS = "apples cups books boats birds trees coins pages miles minutes days houses".split()

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen " \
       "fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """0 <= n < 10,000 -> ``four thousand two hundred seventeen`` (no "and")."""
    assert 0 <= n < 10_000, n
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        head = ONES[n // 100] + " hundred"
        return head if n % 100 == 0 else f"{head} {number_to_words(n % 100)}"
    head = number_to_words(n // 1000) + " thousand"
    return head if n % 1000 == 0 else f"{head} {number_to_words(n % 1000)}"


@dataclass(frozen=True)
class Text:
    """What to say and what it says."""

    spoken: str
    """Text for the synthesizer, with punctuation for intonation."""
    transcript: str
    """Upper case words, characters A-Z, apostrophe and single spaces."""


_NOT_ALLOWED = re.compile(r"[^A-Z' ]")


def to_transcript(spoken: str) -> str:
    """``Is it raining, Anna?`` -> ``IS IT RAINING ANNA``."""
    words = re.sub(r"[.,?!;:]", " ", spoken).upper().split()
    transcript = " ".join(words)
    assert not _NOT_ALLOWED.search(transcript), transcript
    return transcript


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _noun_phrase(rng: np.random.Generator, plural: bool = False) -> str:
    noun = _pick(rng, NOUNS)
    if plural:
        noun = PLURALS.get(noun, noun + "s")
    adjective = _pick(rng, ADJECTIVES) + " " if rng.random() < 0.5 else ""
    if plural:
        return f"{_pick(rng, ('the', 'some', 'two', 'many'))} {adjective}{noun}"
    return f"{_pick(rng, ('the', 'a', 'my', 'our', 'that'))} {adjective}{noun}"


def _subject(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.25:
        return _pick(rng, PRONOUNS)
    if roll < 0.4:
        return _pick(rng, NAMES)
    return _noun_phrase(rng, plural=rng.random() < 0.25)


def _statement(rng: np.random.Generator) -> str:
    subject = _subject(rng)
    if rng.random() < 0.6:
        words = [subject, _pick(rng, TRANSITIVE_PAST), _noun_phrase(rng, plural=rng.random() < 0.3)]
    else:
        words = [subject, _pick(rng, INTRANSITIVE_PAST)]
    if rng.random() < 0.4:
        words += [_pick(rng, PREPOSITIONS), _noun_phrase(rng)]
    elif rng.random() < 0.4:
        words.append(_pick(rng, PLACES))
    if rng.random() < 0.3:
        words.append(_pick(rng, ADVERBS))
    return " ".join(words) + "."


def _question(rng: np.random.Generator) -> str:
    verb = _pick(rng, ("see", "find", "carry", "open", "buy", "watch", "fix", "take"))
    if rng.random() < 0.5:
        return f"did {_subject(rng)} {verb} {_noun_phrase(rng)}?"
    return f"{_pick(rng, QUESTION_WORDS)} did {_subject(rng)} {verb} {_noun_phrase(rng)}?"


def _number_sentence(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.4:
        count = number_to_words(int(rng.integers(2, 1000)))
        return f"{_subject(rng)} {_pick(rng, ('found', 'bought', 'counted', 'saw'))} {count} {_pick(rng, UNITS)}."
    if roll < 0.7:
        hour, minute = int(rng.integers(1, 13)), int(rng.integers(0, 60))
        when = number_to_words(hour) + ("" if minute == 0 else " " + number_to_words(minute))
        return f"the {_pick(rng, ('train', 'bus', 'boat', 'class'))} leaves at {when}."
    digits = " ".join(ONES[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    return f"{_pick(rng, ('the number is', 'call', 'the code is', 'write down'))} {digits}."


def sentence(rng: np.random.Generator) -> str:
    """One spoken sentence with its final punctuation."""
    roll = rng.random()
    if roll < 0.55:
        return _statement(rng)
    if roll < 0.75:
        return _question(rng)
    return _number_sentence(rng)


def short_phrase(rng: np.random.Generator) -> str:
    """One to four words: a greeting, an answer, a name or a number."""
    roll = rng.random()
    if roll < 0.5:
        return _pick(rng, SHORT_PHRASES) + "."
    if roll < 0.75:
        return number_to_words(int(rng.integers(0, 10_000))) + "."
    return f"{_pick(rng, NAMES)}, {_pick(rng, SHORT_PHRASES)}."


def compose(rng: np.random.Generator, target_s: float, rate_wpm: int) -> Text:
    """Sentences until the estimated spoken length reaches ``target_s``.

    The estimate (48 / rate_wpm s per word: eSpeak NG speaks these short words
    about 20% faster than its nominal rate; 0.3 s per sentence pause) only
    decides how many sentences to write; the true length comes from the
    synthesizer.
    """
    seconds_per_word = 48.0 / rate_wpm
    if target_s < 1.5:
        spoken = short_phrase(rng)
    else:
        parts: list[str] = []
        estimate_s = 0.0
        while not parts or estimate_s + 0.5 * seconds_per_word * 6 < target_s:
            part = sentence(rng)
            parts.append(part)
            estimate_s += len(part.split()) * seconds_per_word + 0.3
        spoken = " ".join(parts)
    return Text(spoken=spoken, transcript=to_transcript(spoken))
