"""The task-family suite: determinism, correct answers, held-out clients, option errors."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict

import numpy as np
import pytest

from flexlora.data.synthetic import (
    DEFAULT_OPTIONS,
    FAMILIES,
    build_family_suite,
    build_synthetic_suite,
    generate_examples,
    pretraining_examples,
)
from flexlora.data.synthetic.logic_families import keyword_lists, lexicon
from flexlora.data.synthetic.words import MONTHS, VOWEL_LETTERS
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

SMALL = {"train_per_client": 6, "eval_per_client": 2, "test_per_client": 2}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _fingerprint(suite_clients: dict) -> str:
    blob = json.dumps({cid: asdict(c) for cid, c in suite_clients.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _examples(family: str, variant: int, n: int = 40) -> list[Example]:
    return generate_examples(FAMILIES[family], FAMILIES[family].variants[variant], n, _rng(variant))


# --- determinism -------------------------------------------------------------------------


def test_same_seed_gives_identical_suite_and_other_seed_differs() -> None:
    a = build_family_suite(SMALL, seed=3)
    b = build_family_suite(SMALL, seed=3)
    c = build_family_suite(SMALL, seed=4)
    assert a.clients == b.clients and a.unseen_ids == b.unseen_ids
    assert _fingerprint(a.clients) != _fingerprint(c.clients)


def test_seed_zero_suite_is_pinned() -> None:
    """The same seed must give the same suite on every machine (numpy PCG64 is portable).

    If the families are changed on purpose, update the pinned values.
    """
    suite = build_family_suite(SMALL, seed=0)
    first = suite.clients["arithmetic-v2"].train[0]
    assert (first.instruction, first.output) == ("Add 7 to the number.", str(int(first.input) + 7))
    assert suite.unseen_ids == PINNED_UNSEEN
    assert _fingerprint(suite.clients) == PINNED_FINGERPRINT


PINNED_UNSEEN = [
    "capital_lookup-v1", "join_list-v2", "parity-v0", "parity-v1", "parity-v2", "parity-v3",
    "sort-v2", "wrap-v0", "wrap-v1", "wrap-v2", "wrap-v3",
]  # fmt: skip
PINNED_FINGERPRINT = "12d940d9998ea8f2e30e2b737b12de1fcc71f11c40b6a40d6abfa0387a31b232"


def test_a_clients_data_does_not_depend_on_the_other_clients() -> None:
    small = build_family_suite({**SMALL, "num_clients": 30}, seed=1)
    large = build_family_suite({**SMALL, "num_clients": 60}, seed=1)
    common = set(small.clients) & set(large.clients)
    assert len(common) >= 20
    assert all(small.clients[c] == large.clients[c] for c in common)


# --- shape of the suite ------------------------------------------------------------------


def test_default_suite_sizes_ids_and_categories() -> None:
    suite = build_family_suite({}, seed=0)
    assert len(suite.clients) == DEFAULT_OPTIONS["num_clients"] == 40
    for cid, client in suite.clients.items():
        assert re.fullmatch(r"[a-z_]+-v\d+", cid) and client.client_id == cid
        family = cid.rsplit("-v", 1)[0]
        assert (len(client.train), len(client.eval), len(client.test)) == (64, 8, 8)
        assert {e.category for e in client.train + client.eval + client.test} == {family}
    assert len(suite.seen_ids) + len(suite.unseen_ids) == 40


def test_unseen_clients_hold_whole_families_and_some_variants() -> None:
    options = {**SMALL, "unseen_families": ["wrap", "count"], "unseen_variant_fraction": 0.2}
    suite = build_family_suite(options, seed=5)
    unseen, seen = set(suite.unseen_ids), set(suite.seen_ids)
    assert not unseen & seen
    for family in ("wrap", "count"):
        assert {f"{family}-v{k}" for k in range(len(FAMILIES[family].variants))} <= unseen
    seen_families = {c.rsplit("-v", 1)[0] for c in seen}
    assert not seen_families & {"wrap", "count"}
    held_variants = [c for c in unseen if c.rsplit("-v", 1)[0] not in ("wrap", "count")]
    assert len(held_variants) == round(0.2 * (40 - 8))
    for cid in held_variants:
        family = cid.rsplit("-v", 1)[0]
        assert family in seen_families  # the family still has seen clients
        assert not FAMILIES[family].memorised  # a memorised table cannot be inferred


def test_families_option_restricts_the_suite() -> None:
    options = {**SMALL, "families": ["repeat", "sort"], "unseen_families": [], "num_clients": 6}
    suite = build_family_suite(options, seed=0)
    assert {c.rsplit("-v", 1)[0] for c in suite.clients} == {"repeat", "sort"}
    assert len(suite.unseen_ids) == 1  # round(0.1 * 6)


# --- every family's examples -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_variant_makes_valid_short_examples(name: str) -> None:
    family = FAMILIES[name]
    for variant in (*family.variants, *family.pretrain_variants):
        for e in generate_examples(family, variant, 30, _rng(1)):
            assert e.instruction.strip() and e.output.strip() and e.category == name
            assert "{" not in e.instruction or name == "wrap"  # every placeholder filled
            assert len(e.output.split()) <= 12 and len(e.output) <= 60
    assert not [v for v in family.pretrain_variants if v in family.variants]


def test_string_edit_answers() -> None:
    for e in _examples("reverse_words", 0):
        assert e.output.split() == e.input.split()[::-1]
    for e in _examples("reverse_letters", 2):
        assert e.output.split() == [w[::-1] for w in e.input.split()]
    for e in _examples("change_case", 0):
        assert e.output == e.input.upper()
    for e in _examples("drop_letters", 0):
        assert e.output == "".join(c for c in e.input if c not in VOWEL_LETTERS)
    for e in _examples("drop_letters", 2):
        assert "r" in e.input and e.output == e.input.replace("r", "")
    for e in _examples("repeat", 2):
        assert e.output == f"{e.input}, {e.input}, {e.input}"
    for e in _examples("swap_letters", 0):
        w = e.input
        assert e.output == w[-1] + w[1:-1] + w[0]
    for e in _examples("sort", 3):
        assert [int(x) for x in e.output.split(", ")] == sorted(int(x) for x in e.input.split(", "))


def test_formatting_answers() -> None:
    for e in _examples("join_list", 0):
        assert e.output == ", ".join(e.input.split("\n"))
    for e in _examples("wrap", 2):
        assert e.output == " ".join(f'"{w}"' for w in e.input.split())
    for e in _examples("date_format", 0):
        year, month, day = e.input.split("-")
        assert e.output == f"{day}/{month}/{year}"
    for e in _examples("date_format", 1):
        year, month, day = (int(x) for x in e.input.split("-"))
        assert e.output == f"{MONTHS[month - 1]} {day}, {year}"


def test_arithmetic_and_counting_answers() -> None:
    for e in _examples("arithmetic", 0):
        a, b = (int(x) for x in e.input.split(" and "))
        assert int(e.output) == a + b
    for e in _examples("arithmetic", 3):
        a, b = (int(x) for x in re.findall(r"\d+", e.instruction))
        assert e.input == "" and int(e.output) == a + b
    for e in _examples("count", 0):
        assert int(e.output) == len(e.input.split())
    for e in _examples("count", 2):
        (word,) = re.findall(r"the word (\w+) appear", e.instruction)
        assert int(e.output) == e.input.split().count(word)


def test_lookup_answers() -> None:
    for e in _examples("capital_lookup", 0):
        (country,) = re.findall(r"capital of (\w+)\?", e.instruction)
        table = dict(line.split(": ") for line in e.input.split("\n"))
        assert e.output == table[country]
    for e in _examples("key_value", 0):
        (key,) = re.findall(r"value of (\w+)\?", e.instruction)
        table = dict(pair.split("=") for pair in e.input.split(", "))
        assert e.output == table[key]


def test_rule_classification_answers() -> None:
    for e in _examples("parity", 0):
        assert e.output == ("yes" if int(e.input) % 2 == 0 else "no")
    for e in _examples("has_letter", 0):
        assert e.output == ("yes" if "a" in e.input else "no")
    pos, neg = keyword_lists("sentiment-v0")
    for e in _examples("keyword_sentiment", 0):
        words = set(e.input.split())
        assert len(words & set(pos + neg)) == 1
        assert e.output == ("positive" if words & set(pos) else "negative")
    labels = [e.output for e in _examples("has_letter", 1, 200)]
    assert 0.35 < labels.count("true") / 200 < 0.65  # balanced classes


def test_memorised_families_are_fixed_tables_whatever_the_seed() -> None:
    source, target = lexicon("translate-v0", 24)
    table = dict(zip(source, target, strict=True))
    for seed in (0, 1):
        suite = build_family_suite(
            {**SMALL, "families": ["translate"], "unseen_families": [], "num_clients": 4}, seed
        )
        for e in suite.clients["translate-v0"].train:
            assert e.output == table[e.input]
    assert lexicon("translate-v0", 24) != lexicon("translate-v1", 24)


def test_pretraining_examples_are_deterministic_and_use_only_pretraining_variants() -> None:
    a = pretraining_examples(200, _rng(7))
    assert a == pretraining_examples(200, _rng(7)) and a != pretraining_examples(200, _rng(8))
    assert {e.category for e in a} == set(FAMILIES)
    client_instructions = {
        e.instruction
        for f in FAMILIES.values()
        for k in range(len(f.variants))
        for e in _examples(f.name, k, 5)
    }
    fixed = [
        e for e in a if e.category not in ("arithmetic", "count", "capital_lookup", "key_value")
    ]
    assert not [e.instruction for e in fixed if e.instruction in client_instructions]


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_clientz": 3}, "unknown option data.synthetic.num_clientz"),
        ({"num_clients": 1}, "num_clients must be an int >= 2"),
        ({"num_clients": "40"}, "num_clients must be an int >= 2"),
        ({"train_per_client": 0}, "train_per_client must be an int >= 1"),
        ({"test_per_client": True}, "test_per_client must be an int >= 1"),
        ({"num_clients": 500}, "num_clients=500 must be between"),
        ({"unseen_families": ["nope"]}, "unseen_families: unknown family 'nope'"),
        ({"unseen_families": "wrap"}, "unseen_families must be a list"),
        ({"families": []}, "families must name at least one family"),
        ({"families": ["repeat"], "unseen_families": ["wrap"]}, "unknown family 'wrap'"),
        ({"unseen_variant_fraction": 1.0}, "unseen_variant_fraction must be in [0, 1)"),
    ],
)
def test_bad_options_raise_one_clear_error(options: dict, message: str) -> None:
    with pytest.raises(FlexLoraError, match=re.escape(message)):
        build_family_suite(options, seed=0)


def test_suite_option_picks_the_builder() -> None:
    families = build_synthetic_suite({"suite": "families", **SMALL}, seed=0)
    assert families.clients == build_family_suite(SMALL, seed=0).clients
    assert all("-v" in cid for cid in families.clients)
    world = build_synthetic_suite({}, seed=0)  # the default: the world suite
    assert world.unseen_ids and all("-v" not in cid for cid in world.clients)
    with pytest.raises(FlexLoraError, match="suite must be world or families, got 'nope'"):
        build_synthetic_suite({"suite": "nope"}, seed=0)
