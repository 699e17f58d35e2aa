"""Made-up vocabulary for the synthetic suite: pseudo-words built from syllables.

Nothing here comes from a public dataset: every word is drawn from a small syllable
inventory with a numpy Generator, so the same generator state gives the same words on
any machine. The inventory is small on purpose, so that a byte-level BPE tokenizer
trained on this text ends up with syllable-sized tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from numpy.random import Generator

ONSETS: tuple[str, ...] = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p",
    "r", "s", "t", "v", "z", "br", "kr", "st", "tr",
)  # fmt: skip
VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
CODAS: tuple[str, ...] = ("", "", "", "", "n", "r", "s", "l", "k")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOWEL_LETTERS = "aeiou"
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

T = TypeVar("T")


def pick(rng: Generator, items: Sequence[T]) -> T:
    """One item of `items`, uniformly (keeps Python types, unlike rng.choice)."""
    return items[int(rng.integers(len(items)))]


def syllable(rng: Generator) -> str:
    """One consonant-vowel(-consonant) syllable, e.g. 'bra', 'kel', 'tou'."""
    return pick(rng, ONSETS) + pick(rng, VOWELS) + pick(rng, CODAS)


def pseudo_word(rng: Generator, min_syllables: int = 1, max_syllables: int = 3) -> str:
    """A lowercase pseudo-word of min..max syllables, e.g. 'tovaris'."""
    n = int(rng.integers(min_syllables, max_syllables + 1))
    return "".join(syllable(rng) for _ in range(n))


def pseudo_words(
    rng: Generator,
    n: int,
    min_syllables: int = 1,
    max_syllables: int = 3,
    exclude: frozenset[str] = frozenset(),
) -> list[str]:
    """`n` distinct pseudo-words, none of them in `exclude`."""
    seen: set[str] = set(exclude)
    words: list[str] = []
    while len(words) < n:
        w = pseudo_word(rng, min_syllables, max_syllables)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def pseudo_name(rng: Generator, min_syllables: int = 2, max_syllables: int = 3) -> str:
    """A capitalised pseudo-word used as a proper name (countries, cities, languages)."""
    return pseudo_word(rng, min_syllables, max_syllables).capitalize()


def pseudo_names(rng: Generator, n: int) -> list[str]:
    """`n` distinct capitalised names."""
    return [w.capitalize() for w in pseudo_words(rng, n, 2, 3)]


def pseudo_sentence(rng: Generator, min_words: int = 4, max_words: int = 9) -> str:
    """A capitalised sentence of pseudo-words ending with a full stop."""
    n = int(rng.integers(min_words, max_words + 1))
    return " ".join(pseudo_word(rng) for _ in range(n)).capitalize() + "."
