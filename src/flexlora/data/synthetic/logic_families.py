"""Task families over numbers, tables and rules: arithmetic, counting, look-ups,
classification by a stated rule, and two memorised families (a made-up language and a
made-up catalogue) whose answers only training can teach.
"""

from __future__ import annotations

from functools import lru_cache

from numpy.random import Generator

from flexlora.data.synthetic.family import Params, TaskFamily, Triple, table_rng, yes_no
from flexlora.data.synthetic.words import (
    VOWEL_LETTERS,
    pick,
    pseudo_name,
    pseudo_names,
    pseudo_word,
    pseudo_words,
)


def _make_arithmetic(p: Params, rng: Generator) -> Triple:
    op = p["op"]
    a, b = int(rng.integers(0, 50)), int(rng.integers(0, 50))
    if op == "add":
        return p["instruction"], f"{a} and {b}", str(a + b)
    if op == "sub":
        a, b = max(a, b), min(a, b)
        return p["instruction"], f"{a} and {b}", str(a - b)
    if op == "add_k":
        return p["instruction"].format(k=p["k"]), str(a), str(a + p["k"])
    if op == "ask_add":  # the question is the instruction itself: an example without input
        return p["instruction"].format(a=a, b=b), "", str(a + b)
    if op == "ask_sub":
        a, b = max(a, b), min(a, b)
        return p["instruction"].format(a=a, b=b), "", str(a - b)
    if op == "double":
        return p["instruction"], str(a), str(2 * a)
    if op == "max":
        return p["instruction"], f"{a}, {b}", str(max(a, b))
    if op == "sum3":
        c = int(rng.integers(0, 20))
        return p["instruction"], f"{a}, {b}, {c}", str(a + b + c)
    raise ValueError(f"arithmetic: unknown op {op!r}")


ARITHMETIC = TaskFamily(
    name="arithmetic",
    make=_make_arithmetic,
    variants=(
        {"instruction": "Add the two numbers.", "op": "add"},
        {"instruction": "Subtract the smaller number from the larger one.", "op": "sub"},
        {"instruction": "Add {k} to the number.", "op": "add_k", "k": 7},
        {"instruction": "What is {a} plus {b}?", "op": "ask_add"},
        {"instruction": "Double the number.", "op": "double"},
        {"instruction": "Which of the two numbers is larger?", "op": "max"},
    ),
    pretrain_variants=(
        {"instruction": "Sum the three numbers.", "op": "sum3"},
        {"instruction": "Add {k} to the number.", "op": "add_k", "k": 3},
        {"instruction": "What is {a} minus {b}?", "op": "ask_sub"},
        {"instruction": "Compute the sum of the two numbers.", "op": "add"},
    ),
)


def _make_count(p: Params, rng: Generator) -> Triple:
    mode = p["mode"]
    if mode == "words":
        n = int(rng.integers(2, 9))
        return p["instruction"], " ".join(pseudo_words(rng, n, 1, 2)), str(n)
    if mode == "items":
        n = int(rng.integers(2, 8))
        return p["instruction"], ", ".join(pseudo_words(rng, n, 1, 3)), str(n)
    if mode == "occurrences":
        target, *others = pseudo_words(rng, 3, 1, 2)
        k, n = int(rng.integers(1, 5)), int(rng.integers(5, 9))
        items = [target] * k + [pick(rng, others) for _ in range(n - k)]
        order = rng.permutation(len(items))
        text = " ".join(items[int(i)] for i in order)
        return p["instruction"].format(word=target), text, str(k)
    if mode == "letters":
        word = pseudo_word(rng, 1, 3)
        return p["instruction"], word, str(len(word))
    raise ValueError(f"count: unknown mode {mode!r}")


COUNT = TaskFamily(
    name="count",
    make=_make_count,
    variants=(
        {"instruction": "How many words are in the text?", "mode": "words"},
        {"instruction": "Count the items in the list.", "mode": "items"},
        {"instruction": "How many times does the word {word} appear?", "mode": "occurrences"},
        {"instruction": "How many letters does the word have?", "mode": "letters"},
    ),
    pretrain_variants=(
        {"instruction": "Count the words.", "mode": "words"},
        {"instruction": "Count how often {word} occurs in the text.", "mode": "occurrences"},
    ),
)


def _make_capital_lookup(p: Params, rng: Generator) -> Triple:
    n = int(rng.integers(3, 6))
    names = pseudo_names(rng, 2 * n)
    pairs = list(zip(names[:n], names[n:], strict=True))
    lines = "\n".join(p["row"].format(country=c, capital=k) for c, k in pairs)
    country, capital = pick(rng, pairs)
    if p["ask"] == "capital":
        return p["instruction"].format(country=country), lines, capital
    return p["instruction"].format(capital=capital), lines, country


CAPITAL_LOOKUP = TaskFamily(
    name="capital_lookup",
    make=_make_capital_lookup,
    variants=(
        {
            "instruction": "What is the capital of {country}?",
            "row": "{country}: {capital}",
            "ask": "capital",
        },
        {
            "instruction": "Name the capital of {country}.",
            "row": "The capital of {country} is {capital}.",
            "ask": "capital",
        },
        {
            "instruction": "Which country has the capital {capital}?",
            "row": "{country}: {capital}",
            "ask": "country",
        },
        {
            "instruction": "Using the table, give the capital of {country}.",
            "row": "{country} - {capital}",
            "ask": "capital",
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Tell me the capital city of {country}.",
            "row": "{country} | {capital}",
            "ask": "capital",
        },
        {
            "instruction": "{capital} is the capital of which country?",
            "row": "{capital} is in {country}.",
            "ask": "country",
        },
    ),
)


def _make_key_value(p: Params, rng: Generator) -> Triple:
    n = int(rng.integers(3, 6))
    keys = pseudo_words(rng, n, 1, 2)
    if p["numbers"]:
        values = [str(int(v)) for v in rng.choice(100, size=n, replace=False)]
    else:
        values = pseudo_words(rng, n, 1, 2, exclude=frozenset(keys))
    text = p["sep"].join(p["pair"].format(k=k, v=v) for k, v in zip(keys, values, strict=True))
    i = int(rng.integers(n))
    if p["ask"] == "value":
        return p["instruction"].format(key=keys[i]), text, values[i]
    return p["instruction"].format(value=values[i]), text, keys[i]


KEY_VALUE = TaskFamily(
    name="key_value",
    make=_make_key_value,
    variants=(
        {
            "instruction": "What is the value of {key}?",
            "pair": "{k}={v}",
            "sep": ", ",
            "numbers": False,
            "ask": "value",
        },
        {
            "instruction": "Look up {key} in the dictionary.",
            "pair": "{k}: {v}",
            "sep": "; ",
            "numbers": False,
            "ask": "value",
        },
        {
            "instruction": "Which key has the value {value}?",
            "pair": "{k}={v}",
            "sep": ", ",
            "numbers": False,
            "ask": "key",
        },
        {
            "instruction": "What number is stored under {key}?",
            "pair": "{k} -> {v}",
            "sep": "\n",
            "numbers": True,
            "ask": "value",
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Give the value for the key {key}.",
            "pair": "{k} = {v}",
            "sep": "\n",
            "numbers": False,
            "ask": "value",
        },
        {
            "instruction": "Find the number of {key}.",
            "pair": "{k}: {v}",
            "sep": ", ",
            "numbers": True,
            "ask": "value",
        },
    ),
)


def _make_parity(p: Params, rng: Generator) -> Triple:
    n = int(rng.integers(0, 100))
    rule = p["rule"]
    flag = {"even": n % 2 == 0, "div3": n % 3 == 0, "gt": n > p.get("k", 0)}[rule]
    return p["instruction"].format(k=p.get("k", 0)), str(n), yes_no(flag, p["answers"])


PARITY = TaskFamily(
    name="parity",
    make=_make_parity,
    variants=(
        {
            "instruction": "Is the number even? Answer yes or no.",
            "rule": "even",
            "answers": ("yes", "no"),
        },
        {
            "instruction": "Say whether the number is even or odd.",
            "rule": "even",
            "answers": ("even", "odd"),
        },
        {
            "instruction": "Is the number divisible by 3? Answer yes or no.",
            "rule": "div3",
            "answers": ("yes", "no"),
        },
        {
            "instruction": "Is the number greater than {k}? Answer yes or no.",
            "rule": "gt",
            "k": 50,
            "answers": ("yes", "no"),
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Is the number odd? Answer true or false.",
            "rule": "even",
            "answers": ("false", "true"),
        },
        {
            "instruction": "Is the number bigger than {k}? Answer yes or no.",
            "rule": "gt",
            "k": 20,
            "answers": ("yes", "no"),
        },
    ),
)


def _make_has_letter(p: Params, rng: Generator) -> Triple:
    want = bool(rng.integers(2))  # balanced classes: draw the label first, then a word that fits
    rule = p["rule"]
    letter = p.get("letter", "")
    tests = {
        "contains": lambda w: letter in w,
        "starts": lambda w: w.startswith(letter),
        "vowel_end": lambda w: w[-1] in VOWEL_LETTERS,
    }
    word = pseudo_word(rng, 1, 3)
    while tests[rule](word) != want:
        word = pseudo_word(rng, 1, 3)
    return p["instruction"].format(letter=letter), word, yes_no(want, p["answers"])


HAS_LETTER = TaskFamily(
    name="has_letter",
    make=_make_has_letter,
    variants=(
        {
            "instruction": "Does the word contain the letter {letter}? Answer yes or no.",
            "rule": "contains",
            "letter": "a",
            "answers": ("yes", "no"),
        },
        {
            "instruction": "Is there a letter {letter} in the word? Answer true or false.",
            "rule": "contains",
            "letter": "o",
            "answers": ("true", "false"),
        },
        {
            "instruction": "Does the word start with {letter}? Answer yes or no.",
            "rule": "starts",
            "letter": "t",
            "answers": ("yes", "no"),
        },
        {
            "instruction": "Does the word end with a vowel? Answer yes or no.",
            "rule": "vowel_end",
            "answers": ("yes", "no"),
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Does the word contain {letter}? Answer yes or no.",
            "rule": "contains",
            "letter": "e",
            "answers": ("yes", "no"),
        },
        {
            "instruction": "Does the word begin with the letter {letter}? Say yes or no.",
            "rule": "starts",
            "letter": "k",
            "answers": ("yes", "no"),
        },
    ),
)


@lru_cache(maxsize=64)
def keyword_lists(key: str, n: int = 3) -> tuple[list[str], list[str]]:
    """The fixed positive and negative keyword lists of one sentiment task (cached: do not
    mutate the lists)."""
    words = pseudo_words(table_rng(key), 2 * n, 2, 2)
    return words[:n], words[n:]


def _make_keyword_sentiment(p: Params, rng: Generator) -> Triple:
    pos, neg = keyword_lists(p["table"])
    want = bool(rng.integers(2))
    keyword = pick(rng, pos if want else neg)
    filler = pseudo_words(rng, int(rng.integers(3, 6)), 1, 1, exclude=frozenset(pos + neg))
    filler.insert(int(rng.integers(len(filler) + 1)), keyword)
    instruction = p["instruction"].format(pos=", ".join(pos), neg=", ".join(neg))
    return instruction, " ".join(filler), yes_no(want, p["answers"])


_SENTIMENT = "Good words: {pos}. Bad words: {neg}. Is the review positive or negative?"
KEYWORD_SENTIMENT = TaskFamily(
    name="keyword_sentiment",
    make=_make_keyword_sentiment,
    variants=(
        {"instruction": _SENTIMENT, "table": "sentiment-v0", "answers": ("positive", "negative")},
        {"instruction": _SENTIMENT, "table": "sentiment-v1", "answers": ("positive", "negative")},
        {
            "instruction": "Happy words: {pos}. Sad words: {neg}. Is the text happy or sad?",
            "table": "sentiment-v2",
            "answers": ("happy", "sad"),
        },
        {
            "instruction": (
                "A text is good if it has one of {pos} and bad if it has one of {neg}. "
                "Classify it as good or bad."
            ),
            "table": "sentiment-v3",
            "answers": ("good", "bad"),
        },
    ),
    pretrain_variants=(
        {
            "instruction": "Nice words: {pos}. Nasty words: {neg}. Is the text nice or nasty?",
            "table": "sentiment-p0",
            "answers": ("nice", "nasty"),
        },
        {"instruction": _SENTIMENT, "table": "sentiment-p1", "answers": ("positive", "negative")},
    ),
)


@lru_cache(maxsize=64)
def lexicon(key: str, size: int) -> tuple[list[str], list[str]]:
    """A fixed table of `size` source words and their made-up translations (cached: do not
    mutate the lists)."""
    rng = table_rng(key)
    source = pseudo_words(rng, size, 1, 2)
    return source, pseudo_words(rng, size, 1, 2, exclude=frozenset(source))


def _make_translate(p: Params, rng: Generator) -> Triple:
    source, target = lexicon(p["table"], p["size"])
    idx = [int(i) for i in rng.permutation(len(source))[: p["words"]]]
    language = pseudo_name(table_rng(p["table"] + "-name"))
    return (
        p["instruction"].format(language=language),
        " ".join(source[i] for i in idx),
        " ".join(target[i] for i in idx),
    )


TRANSLATE = TaskFamily(
    name="translate",
    make=_make_translate,
    variants=tuple(
        {
            "instruction": "Translate the text into {language}.",
            "table": f"translate-v{k}",
            "size": 24,
            "words": 1 + k % 2,
        }
        for k in range(4)
    ),
    pretrain_variants=tuple(
        {
            "instruction": "Say it in {language}.",
            "table": f"translate-p{k}",
            "size": 24,
            "words": 1 + k % 2,
        }
        for k in range(2)
    ),
    memorised=True,
)


def _make_secret_code(p: Params, rng: Generator) -> Triple:
    items, _ = lexicon(p["table"], p["size"])
    codes = [int(c) + 100 for c in table_rng(p["table"] + "-codes").permutation(900)[: p["size"]]]
    i = int(rng.integers(p["size"]))
    shop = pseudo_name(table_rng(p["table"] + "-name"))
    return p["instruction"].format(shop=shop), items[i], str(codes[i])


SECRET_CODE = TaskFamily(
    name="secret_code",
    make=_make_secret_code,
    variants=tuple(
        {
            "instruction": "Give the code number of the item in the {shop} catalogue.",
            "table": f"code-v{k}",
            "size": 20,
        }
        for k in range(4)
    ),
    pretrain_variants=(
        {"instruction": "What is the {shop} code of this item?", "table": "code-p0", "size": 20},
    ),
    memorised=True,
)

LOGIC_FAMILIES: tuple[TaskFamily, ...] = (
    ARITHMETIC, COUNT, CAPITAL_LOOKUP, KEY_VALUE, PARITY,
    HAS_LETTER, KEYWORD_SENTIMENT, TRANSLATE, SECRET_CODE,
)  # fmt: skip
