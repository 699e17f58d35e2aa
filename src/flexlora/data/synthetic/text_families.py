"""Task families over words and letters: string edits and formatting.

Each `_make_*` draws one example of a variant; each FAMILY constant lists the client
variants (one client each) and the pretraining-only variants of the family.
"""

from __future__ import annotations

from numpy.random import Generator

from flexlora.data.synthetic.family import Params, TaskFamily, Triple
from flexlora.data.synthetic.words import MONTHS, VOWEL_LETTERS, pseudo_word, pseudo_words


def _count(rng: Generator, p: Params) -> int:
    return int(rng.integers(p["min"], p["max"] + 1))


def _make_reverse_words(p: Params, rng: Generator) -> Triple:
    words = pseudo_words(rng, _count(rng, p), 1, 2)
    sep = p["sep"]
    return p["instruction"], sep.join(words), sep.join(reversed(words))


REVERSE_WORDS = TaskFamily(
    name="reverse_words",
    make=_make_reverse_words,
    variants=(
        {"instruction": "Reverse the order of the words.", "sep": " ", "min": 3, "max": 5},
        {
            "instruction": "Write these words backwards, last word first.",
            "sep": " ",
            "min": 2,
            "max": 4,
        },
        {"instruction": "List the items in reverse order.", "sep": ", ", "min": 3, "max": 5},
        {"instruction": "Put the words in the opposite order.", "sep": " ", "min": 4, "max": 6},
    ),
    pretrain_variants=(
        {"instruction": "Say the words from last to first.", "sep": " ", "min": 2, "max": 6},
        {"instruction": "Reverse the list.", "sep": "; ", "min": 2, "max": 5},
    ),
)


def _make_reverse_letters(p: Params, rng: Generator) -> Triple:
    words = pseudo_words(rng, p["words"], 1, 2)
    return p["instruction"], " ".join(words), " ".join(w[::-1] for w in words)


REVERSE_LETTERS = TaskFamily(
    name="reverse_letters",
    make=_make_reverse_letters,
    variants=(
        {"instruction": "Spell the word backwards.", "words": 1},
        {"instruction": "Reverse the letters of the word.", "words": 1},
        {"instruction": "Reverse the letters of each word.", "words": 2},
    ),
    pretrain_variants=(
        {"instruction": "Write the word with its letters in reverse order.", "words": 1},
    ),
)


def _make_change_case(p: Params, rng: Generator) -> Triple:
    words = pseudo_words(rng, _count(rng, p), 1, 3)
    mode = p["mode"]
    if mode == "upper":
        return p["instruction"], " ".join(words), " ".join(words).upper()
    if mode == "title":
        return p["instruction"], " ".join(words), " ".join(w.capitalize() for w in words)
    if mode == "lower":
        return p["instruction"], " ".join(words).upper(), " ".join(words)
    if mode == "first_upper":
        return p["instruction"], " ".join(words), words[0].upper()
    raise ValueError(f"change_case: unknown mode {mode!r}")


CHANGE_CASE = TaskFamily(
    name="change_case",
    make=_make_change_case,
    variants=(
        {"instruction": "Write the text in capital letters.", "mode": "upper", "min": 1, "max": 3},
        {
            "instruction": "Capitalize the first letter of every word.",
            "mode": "title",
            "min": 2,
            "max": 4,
        },
        {"instruction": "Convert the text to lowercase.", "mode": "lower", "min": 1, "max": 3},
        {
            "instruction": "Write only the first word, in capital letters.",
            "mode": "first_upper",
            "min": 2,
            "max": 4,
        },
    ),
    pretrain_variants=(
        {"instruction": "Make every letter uppercase.", "mode": "upper", "min": 1, "max": 2},
        {
            "instruction": "Start each word with a capital letter.",
            "mode": "title",
            "min": 1,
            "max": 3,
        },
    ),
)


def _make_drop_letters(p: Params, rng: Generator) -> Triple:
    mode = p["mode"]
    if mode == "vowels":
        word = pseudo_word(rng, 2, 3)
        return p["instruction"], word, "".join(c for c in word if c not in VOWEL_LETTERS)
    if mode == "letter":
        letter = p["letter"]
        words = pseudo_words(rng, 2, 1, 3)
        while letter not in "".join(words):  # the rule must have something to remove
            words = pseudo_words(rng, 2, 1, 3)
        text = " ".join(words)
        return p["instruction"].format(letter=letter), text, text.replace(letter, "")
    if mode == "first":
        words = pseudo_words(rng, _count(rng, p), 2, 3)
        return p["instruction"], " ".join(words), " ".join(w[1:] for w in words)
    raise ValueError(f"drop_letters: unknown mode {mode!r}")


DROP_LETTERS = TaskFamily(
    name="drop_letters",
    make=_make_drop_letters,
    variants=(
        {"instruction": "Remove all vowels from the word.", "mode": "vowels"},
        {
            "instruction": "Delete every letter {letter} from the text.",
            "mode": "letter",
            "letter": "a",
        },
        {
            "instruction": "Delete every letter {letter} from the text.",
            "mode": "letter",
            "letter": "r",
        },
        {
            "instruction": "Remove the first letter of each word.",
            "mode": "first",
            "min": 1,
            "max": 3,
        },
    ),
    pretrain_variants=(
        {"instruction": "Take out the letter {letter}.", "mode": "letter", "letter": "e"},
        {"instruction": "Write the word without its vowels.", "mode": "vowels"},
    ),
)


def _make_repeat(p: Params, rng: Generator) -> Triple:
    word = pseudo_word(rng, 1, 2)
    return p["instruction"], word, p["sep"].join([word] * p["times"])


REPEAT = TaskFamily(
    name="repeat",
    make=_make_repeat,
    variants=(
        {"instruction": "Repeat the word two times.", "times": 2, "sep": " "},
        {"instruction": "Repeat the word three times.", "times": 3, "sep": " "},
        {
            "instruction": "Write the word three times, separated by commas.",
            "times": 3,
            "sep": ", ",
        },
        {"instruction": "Say the word twice with a dash between.", "times": 2, "sep": "-"},
    ),
    pretrain_variants=(
        {"instruction": "Write the word four times.", "times": 4, "sep": " "},
        {
            "instruction": "Repeat the word twice, separated by a semicolon.",
            "times": 2,
            "sep": "; ",
        },
    ),
)


def _make_swap_letters(p: Params, rng: Generator) -> Triple:
    word = pseudo_word(rng, 2, 3)
    mode = p["mode"]
    if mode == "ends":
        out = word[-1] + word[1:-1] + word[0]
    elif mode == "first_two":
        out = word[1] + word[0] + word[2:]
    elif mode == "rotate":
        out = word[1:] + word[0]
    else:
        raise ValueError(f"swap_letters: unknown mode {mode!r}")
    return p["instruction"], word, out


SWAP_LETTERS = TaskFamily(
    name="swap_letters",
    make=_make_swap_letters,
    variants=(
        {"instruction": "Swap the first and last letters of the word.", "mode": "ends"},
        {"instruction": "Exchange the first letter and the last letter.", "mode": "ends"},
        {"instruction": "Swap the first two letters of the word.", "mode": "first_two"},
        {"instruction": "Move the first letter to the end of the word.", "mode": "rotate"},
    ),
    pretrain_variants=({"instruction": "Switch the first and the final letter.", "mode": "ends"},),
)


def _make_sort(p: Params, rng: Generator) -> Triple:
    mode = p["mode"]
    if mode in ("words", "words_desc"):
        words = pseudo_words(rng, _count(rng, p), 1, 2)
        out = sorted(words, reverse=mode == "words_desc")
        return p["instruction"], " ".join(words), " ".join(out)
    if mode == "letters":
        word = pseudo_word(rng, 1, 2)
        return p["instruction"], word, "".join(sorted(word))
    if mode in ("numbers", "numbers_desc"):
        nums = [int(x) for x in rng.choice(100, size=_count(rng, p), replace=False)]
        out_nums = sorted(nums, reverse=mode == "numbers_desc")
        return p["instruction"], ", ".join(map(str, nums)), ", ".join(map(str, out_nums))
    raise ValueError(f"sort: unknown mode {mode!r}")


SORT = TaskFamily(
    name="sort",
    make=_make_sort,
    variants=(
        {"instruction": "Sort the words alphabetically.", "mode": "words", "min": 3, "max": 4},
        {
            "instruction": "Sort the words in reverse alphabetical order.",
            "mode": "words_desc",
            "min": 3,
            "max": 4,
        },
        {"instruction": "Sort the letters of the word alphabetically.", "mode": "letters"},
        {
            "instruction": "Sort the numbers from smallest to largest.",
            "mode": "numbers",
            "min": 3,
            "max": 5,
        },
        {
            "instruction": "Sort the numbers from largest to smallest.",
            "mode": "numbers_desc",
            "min": 3,
            "max": 5,
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Put the words in alphabetical order.",
            "mode": "words",
            "min": 2,
            "max": 3,
        },
        {
            "instruction": "Order the numbers, smallest first.",
            "mode": "numbers",
            "min": 2,
            "max": 4,
        },
    ),
)


def _make_join_list(p: Params, rng: Generator) -> Triple:
    words = pseudo_words(rng, _count(rng, p), 1, 2)
    text = p["in_sep"].join(words)
    if p["out"] == "and":
        return p["instruction"], text, ", ".join(words[:-1]) + " and " + words[-1]
    return p["instruction"], text, p["out"].join(words)


JOIN_LIST = TaskFamily(
    name="join_list",
    make=_make_join_list,
    variants=(
        {
            "instruction": "Join the lines into one comma-separated list.",
            "in_sep": "\n",
            "out": ", ",
            "min": 3,
            "max": 5,
        },
        {
            "instruction": "Separate the words with semicolons.",
            "in_sep": " ",
            "out": "; ",
            "min": 3,
            "max": 5,
        },
        {
            "instruction": "Write the list with 'and' before the last item.",
            "in_sep": ", ",
            "out": "and",
            "min": 3,
            "max": 4,
        },
        {
            "instruction": "Join the words with dashes.",
            "in_sep": " ",
            "out": "-",
            "min": 2,
            "max": 4,
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Turn the lines into a list separated by commas.",
            "in_sep": "\n",
            "out": ", ",
            "min": 2,
            "max": 4,
        },
        {
            "instruction": "Join the words with slashes.",
            "in_sep": " ",
            "out": "/",
            "min": 2,
            "max": 4,
        },
    ),
)


def _make_wrap(p: Params, rng: Generator) -> Triple:
    left, right = p["brackets"]
    words = pseudo_words(rng, _count(rng, p), 1, 2)
    if p["each"]:
        return p["instruction"], " ".join(words), " ".join(f"{left}{w}{right}" for w in words)
    return p["instruction"], " ".join(words), f"{left}{' '.join(words)}{right}"


WRAP = TaskFamily(
    name="wrap",
    make=_make_wrap,
    variants=(
        {
            "instruction": "Wrap the word in square brackets.",
            "brackets": "[]",
            "each": False,
            "min": 1,
            "max": 1,
        },
        {
            "instruction": "Put the text in parentheses.",
            "brackets": "()",
            "each": False,
            "min": 1,
            "max": 3,
        },
        {
            "instruction": "Put each word in double quotes.",
            "brackets": '""',
            "each": True,
            "min": 2,
            "max": 3,
        },
        {
            "instruction": "Surround the text with angle brackets.",
            "brackets": "<>",
            "each": False,
            "min": 1,
            "max": 3,
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Enclose the text in curly braces.",
            "brackets": "{}",
            "each": False,
            "min": 1,
            "max": 3,
        },
        {
            "instruction": "Put each word in square brackets.",
            "brackets": "[]",
            "each": True,
            "min": 2,
            "max": 3,
        },
    ),
)


def _make_date_format(p: Params, rng: Generator) -> Triple:
    year, month, day = (
        int(rng.integers(1950, 2040)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 29)),
    )
    iso = f"{year:04d}-{month:02d}-{day:02d}"
    formats = {
        "iso": iso,
        "dmy": f"{day:02d}/{month:02d}/{year:04d}",
        "mdy": f"{month:02d}/{day:02d}/{year:04d}",
        "long": f"{MONTHS[month - 1]} {day}, {year}",
        "day_month": f"{day} {MONTHS[month - 1]} {year}",
        "dotted": f"{day}.{month}.{year}",
        "year": str(year),
    }
    return p["instruction"], formats[p["src"]], formats[p["dst"]]


DATE_FORMAT = TaskFamily(
    name="date_format",
    make=_make_date_format,
    variants=(
        {"instruction": "Rewrite the date as day/month/year.", "src": "iso", "dst": "dmy"},
        {"instruction": "Write the date with the name of the month.", "src": "iso", "dst": "long"},
        {"instruction": "Rewrite the date as month/day/year.", "src": "iso", "dst": "mdy"},
        {
            "instruction": "Write the date in the form year-month-day.",
            "src": "day_month",
            "dst": "iso",
        },
        {"instruction": "Which year is in the date?", "src": "long", "dst": "year"},
    ),
    pretrain_variants=(
        {"instruction": "Write the date with dots: day.month.year.", "src": "iso", "dst": "dotted"},
        {
            "instruction": "Give the date as day, month name and year.",
            "src": "iso",
            "dst": "day_month",
        },
    ),
)

TEXT_FAMILIES: tuple[TaskFamily, ...] = (
    REVERSE_WORDS, REVERSE_LETTERS, CHANGE_CASE, DROP_LETTERS, REPEAT,
    SWAP_LETTERS, SORT, JOIN_LIST, WRAP, DATE_FORMAT,
)  # fmt: skip
