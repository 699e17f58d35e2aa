"""The world suite: answers are the world's facts, unseen clients are new wordings and
compositions of the seen tasks, sizes and options."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flexlora.data.synthetic.world import (
    ATTRIBUTES,
    OPTIONS,
    WORDINGS,
    build_world_suite,
    pretraining_examples,
)
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError


def _creature(example: Example, names: tuple[str, ...]) -> int:
    """The index of the one creature the question names."""
    asked = [
        i
        for i, n in enumerate(names)
        if re.search(rf"\b{n}\b", example.instruction + " " + example.input)
    ]
    assert len(asked) == 1, example
    return asked[0]


def test_same_seed_same_suite_other_seed_other_world() -> None:
    a, b, c = build_world_suite({}, 3), build_world_suite({}, 3), build_world_suite({}, 4)
    assert a.clients == b.clients and a.unseen_ids == b.unseen_ids and a.world == b.world
    assert a.world.names != c.world.names


def test_every_answer_is_the_worlds_fact() -> None:
    suite = build_world_suite({}, 0)
    world = suite.world
    checked = 0
    for client in suite.clients.values():
        for e in client.train + client.eval + client.test:
            entity = _creature(e, world.names)
            attributes = e.category.split("+")
            assert e.output == " and ".join(world.values[a][entity] for a in attributes)
            checked += 1
    assert checked == len(suite.clients) * 120  # 64 + 8 + 48 examples each


def test_values_are_two_made_up_words_and_creatures_differ() -> None:
    world = build_world_suite({}, 1).world
    assert len(set(world.names)) == OPTIONS["entities"]
    for attribute in ATTRIBUTES:
        values = world.values[attribute]
        assert len(values) == OPTIONS["entities"]
        assert all(len(v.split()) == 2 for v in values)
        assert len(set(values)) > OPTIONS["entities"] // 2  # 36 possible values, drawn


def test_unseen_clients_are_paraphrases_and_compositions_of_seen_tasks() -> None:
    suite = build_world_suite({}, 2)
    unseen = suite.unseen_ids
    paraphrases = [c for c in unseen if c.endswith("-paraphrase")]
    compositions = [c for c in unseen if c.endswith("-composition")]
    assert (
        len(paraphrases) == OPTIONS["paraphrases"] and len(compositions) == OPTIONS["compositions"]
    )
    assert len(unseen) == len(paraphrases) + len(compositions)
    seen_ids = [c for c in suite.clients if c not in unseen]
    assert len(seen_ids) == len(ATTRIBUTES) * len(WORDINGS) - len(paraphrases)
    seen_instructions = {
        (e.category, re.sub(r"[A-Z][a-z]+", "<name>", e.instruction))
        for c in seen_ids
        for e in suite.clients[c].train
    }
    for cid in paraphrases:
        attribute = cid.split("-")[0]
        # the held-out wording is one no seen client of that attribute trains on ...
        wording = {
            (e.category, re.sub(r"[A-Z][a-z]+", "<name>", e.instruction))
            for e in suite.clients[cid].test
        }
        assert not wording & seen_instructions
        # ... while the attribute itself is trained by the other wordings
        assert sum(c.startswith(f"{attribute}-w") for c in seen_ids) == len(WORDINGS) - 1
    for cid in compositions:
        first, second = cid.removesuffix("-composition").split("+")
        assert first in ATTRIBUTES and second in ATTRIBUTES and first != second
        assert all(" and " in e.output for e in suite.clients[cid].test)


def test_seen_clients_ask_about_their_own_half_and_unseen_about_everyone() -> None:
    suite = build_world_suite({"test_per_client": 400}, 0)
    names = suite.world.names
    for cid, client in suite.clients.items():
        asked = {_creature(e, names) for e in client.train + client.eval + client.test}
        if cid in suite.unseen_ids:
            assert len(asked) == OPTIONS["entities"]
        else:
            assert len(asked) <= OPTIONS["entities_per_client"]


def test_options_set_the_sizes() -> None:
    options = {"entities": 6, "entities_per_client": 3, "paraphrases": 1, "compositions": 0,
               "train_per_client": 5, "eval_per_client": 0, "test_per_client": 2}  # fmt: skip
    suite = build_world_suite(options, 0)
    assert len(suite.world.names) == 6 and len(suite.unseen_ids) == 1
    assert len(suite.clients) == len(ATTRIBUTES) * len(WORDINGS)
    for client in suite.clients.values():
        assert (len(client.train), len(client.eval), len(client.test)) == (5, 0, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"creatures": 3}, "unknown option data.synthetic.creatures for the world suite"),
        ({"entities": 1}, "entities must be an int from 2"),
        (
            {"entities": 4, "entities_per_client": 5},
            "entities_per_client must be an int from 1 to 4",
        ),
        ({"paraphrases": 5}, "paraphrases must be an int from 0 to 4"),
        ({"compositions": True}, "compositions must be an int"),
        ({"paraphrases": 0, "compositions": 0}, "would have no unseen clients"),
        ({"test_per_client": 0}, "test_per_client must be an int from 1"),
    ],
)
def test_bad_options_raise_one_clear_error(options: dict, message: str) -> None:
    with pytest.raises(FlexLoraError, match=re.escape(message)):
        build_world_suite(options, 0)


def test_pretraining_questions_are_open_book_in_other_wordings() -> None:
    rng = np.random.Generator(np.random.PCG64(5))
    examples = pretraining_examples(200, rng)
    assert examples == pretraining_examples(200, np.random.Generator(np.random.PCG64(5)))
    client_wordings = {w.split("{")[0] for w, _ in WORDINGS}
    for e in examples:
        assert e.input and not any(e.instruction.startswith(w) for w in client_wordings if w)
        for value in e.output.split(" and "):
            assert value in e.input  # the answer is in the notes: nothing to memorise
    assert any(" and " in e.output for e in examples) and any(
        " and " not in e.output for e in examples
    )
