"""The offline default suite: clients that ask about one made-up world in different ways.

Every seed draws a small world: `entities` creatures with made-up names, each with a
value for every attribute (its colour, home, food and song). A value is two made-up
words, so an answer that gets one of them right earns partial Rouge-L credit.

A seen client is one task: one attribute asked in one wording, about its own half of
the creatures (clients hold different knowledge, as real clients do). The unseen
clients are the tasks a federation should generalise to, never trained on:

- a *paraphrase*: an attribute asked in a wording no client trains on;
- a *composition*: two attributes asked at once ("the colour and the home of X"),
  answered as "<value> and <value>", a form no client trains on.

Both are about every creature, so they need what all the seen clients learnt together;
the base model knows none of the world, so everything it scores there comes from
federated training. The more of the world's facts an adapter can hold, the better it
answers, which is what gives LoRA rank its value here.

Everything is drawn with numpy's PCG64 from the seed: the same seed gives the same
world, clients and examples on any machine.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from numpy.random import Generator

from flexlora.data.synthetic.words import pseudo_names, pseudo_words
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

ATTRIBUTES: tuple[str, ...] = ("colour", "home", "food", "song")
"""What every creature has; each is the category of the examples that ask for it."""

WORDINGS: tuple[tuple[str, str], ...] = (
    ("What is the {attribute} of {name}?", ""),
    ("Tell me the {attribute} of {name}.", ""),
    ("Name the {attribute} of {name}.", ""),
    ("Which {attribute} does {name} have?", ""),
    ("{name}: what is its {attribute}?", ""),
    ("Give the {attribute} of this creature.", "{name}"),
    ("Say the {attribute} of the creature named in the input.", "{name}"),
)
"""(instruction, input) templates of a one-attribute question; each is one task per
attribute. Some put the creature's name in the input field, as Alpaca data often does."""

COMPOSITION = ("What are the {first} and the {second} of {name}?", "")
"""The two-attribute question of the composition clients."""

PRETRAINING_WORDINGS: tuple[str, ...] = (
    "Read the notes. What is the {attribute} of {name}?",
    "From the notes, give the {attribute} of {name}.",
    "Look up the {attribute} of {name} in the notes.",
)
PRETRAINING_COMPOSITION = "From the notes, give the {first} and the {second} of {name}."
"""Open-book questions for the base model's build only: the facts are in the input, of a
fresh small world each time, and the wordings are not the clients'. So the base model
learns how such questions are answered (two-word values, "<value> and <value>") but no
world's facts: what it scores on a suite's clients comes from federated training."""

VALUE_WORDS = 6
"""Made-up words for each half of an attribute's values: 6 x 6 = 36 possible values."""

OPTIONS: dict[str, Any] = {
    "suite": "world",
    "entities": 24,
    "entities_per_client": 12,
    "paraphrases": 4,
    "compositions": 2,
    "train_per_client": 64,
    "eval_per_client": 8,
    "test_per_client": 48,
}
"""Options of the world suite (`data.synthetic`) and their defaults.

entities: creatures in the world. entities_per_client: how many of them a seen client
asks about. paraphrases: unseen one-attribute tasks (a held-out wording for that many
attributes). compositions: unseen two-attribute tasks. train/eval/test_per_client:
examples in each split of every client (unseen clients are scored on their test split).
"""


@dataclass(frozen=True)
class World:
    """The facts: names[i] has value values[attribute][i] (two words joined by a space)."""

    names: tuple[str, ...]
    values: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Task:
    """One client's task: the attributes it asks for (two for a composition), its
    wording (index into WORDINGS; -1 for a composition) and the creatures it asks about."""

    client_id: str
    attributes: tuple[str, ...]
    wording: int
    entities: tuple[int, ...]

    def example(self, world: World, entity: int) -> Example:
        """The question about creature `entity`, with its answer."""
        name = world.names[entity]
        answers = [world.values[a][entity] for a in self.attributes]
        if len(self.attributes) == 1:
            instruction, text = WORDINGS[self.wording]
            fields = {"attribute": self.attributes[0], "name": name}
        else:
            instruction, text = COMPOSITION
            fields = {"first": self.attributes[0], "second": self.attributes[1], "name": name}
        return Example(
            instruction=instruction.format(**fields),
            input=text.format(**fields),
            output=" and ".join(answers),
            category="+".join(self.attributes),
        )


@dataclass
class WorldSuite:
    """Clients by id, the ids held out as unseen, and the world they ask about."""

    clients: dict[str, ClientData]
    unseen_ids: list[str]
    world: World


def draw_world(entities: int, rng: Generator) -> World:
    """`entities` creatures, each with a two-word value for every attribute."""
    names = pseudo_names(rng, entities)
    taken = frozenset(n.lower() for n in names)
    values: dict[str, tuple[str, ...]] = {}
    for attribute in ATTRIBUTES:
        words = pseudo_words(rng, 2 * VALUE_WORDS, 1, 2, exclude=taken)
        taken |= frozenset(words)
        first, second = words[:VALUE_WORDS], words[VALUE_WORDS:]
        values[attribute] = tuple(
            f"{first[int(i)]} {second[int(j)]}"
            for i, j in zip(
                rng.integers(VALUE_WORDS, size=entities),
                rng.integers(VALUE_WORDS, size=entities),
                strict=True,
            )
        )
    return World(names=tuple(names), values=values)


def _client_rng(seed: int, cid: str) -> Generator:
    """One generator per client, keyed by its id: a client's examples do not depend on
    which other clients the suite holds."""
    return np.random.Generator(np.random.PCG64([seed, zlib.crc32(cid.encode())]))


def _int_option(opts: Mapping[str, Any], key: str, minimum: int, maximum: int) -> int:
    value = opts[key]
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise FlexLoraError(
            f"data.synthetic.{key} must be an int from {minimum} to {maximum}, got {value!r}"
        )
    return value


def with_defaults(
    options: Mapping[str, Any], defaults: Mapping[str, Any], suite: str
) -> dict[str, Any]:
    """`options` over a suite's `defaults`; FlexLoraError naming an option it does not know."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise FlexLoraError(
            f"unknown option data.synthetic.{unknown[0]} for the {suite} suite "
            f"(known: {', '.join(sorted(defaults))})"
        )
    return {**defaults, **options}


def validated_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The world suite's options with defaults filled in; FlexLoraError on a bad one."""
    opts = with_defaults(options, OPTIONS, "world")
    _int_option(opts, "entities", 2, 10_000)
    _int_option(opts, "entities_per_client", 1, opts["entities"])
    _int_option(opts, "paraphrases", 0, len(ATTRIBUTES))
    _int_option(opts, "compositions", 0, len(list(combinations(ATTRIBUTES, 2))))
    _int_option(opts, "train_per_client", 1, 1_000_000)
    _int_option(opts, "eval_per_client", 0, 1_000_000)
    _int_option(opts, "test_per_client", 1, 1_000_000)
    if opts["paraphrases"] + opts["compositions"] == 0:
        raise FlexLoraError(
            "data.synthetic: paraphrases and compositions are both 0, so the world suite "
            "would have no unseen clients"
        )
    return opts


def choose_tasks(opts: Mapping[str, Any], rng: Generator) -> tuple[list[Task], list[Task]]:
    """(seen tasks, unseen tasks).

    For `paraphrases` attributes one wording is held out (an unseen task about every
    creature); every other (attribute, wording) pair is a seen task about its own
    `entities_per_client` creatures. `compositions` attribute pairs are unseen tasks.
    """
    every_entity = tuple(range(opts["entities"]))
    held: dict[str, int] = {
        ATTRIBUTES[int(a)]: int(rng.integers(len(WORDINGS)))
        for a in rng.permutation(len(ATTRIBUTES))[: opts["paraphrases"]]
    }
    seen: list[Task] = []
    unseen: list[Task] = []
    for attribute in ATTRIBUTES:
        for w in range(len(WORDINGS)):
            cid = f"{attribute}-w{w}"
            if held.get(attribute) == w:
                unseen.append(Task(f"{cid}-paraphrase", (attribute,), w, every_entity))
                continue
            chosen = rng.choice(opts["entities"], size=opts["entities_per_client"], replace=False)
            seen.append(Task(cid, (attribute,), w, tuple(sorted(int(e) for e in chosen))))
    pairs = list(combinations(ATTRIBUTES, 2))
    for p in sorted(int(i) for i in rng.permutation(len(pairs))[: opts["compositions"]]):
        first, second = pairs[p]
        unseen.append(Task(f"{first}+{second}-composition", pairs[p], -1, every_entity))
    return seen, unseen


def _examples(task: Task, world: World, n: int, rng: Generator) -> list[Example]:
    """`n` questions of `task` about creatures drawn uniformly from its own."""
    picks = rng.integers(len(task.entities), size=n)
    return [task.example(world, task.entities[int(i)]) for i in picks]


def build_world_suite(options: Mapping[str, Any], seed: int) -> WorldSuite:
    """The world suite described by `options` (see OPTIONS) for `seed`."""
    opts = validated_options(options)
    rng = np.random.Generator(np.random.PCG64(seed))
    world = draw_world(opts["entities"], rng)
    seen, unseen = choose_tasks(opts, rng)
    sizes = (opts["train_per_client"], opts["eval_per_client"], opts["test_per_client"])
    clients: dict[str, ClientData] = {}
    for task in sorted(seen + unseen, key=lambda t: t.client_id):
        examples = _examples(task, world, sum(sizes), _client_rng(seed, task.client_id))
        n_train, n_eval, _ = sizes
        clients[task.client_id] = ClientData(
            client_id=task.client_id,
            train=examples[:n_train],
            eval=examples[n_train : n_train + n_eval],
            test=examples[n_train + n_eval :],
        )
    unseen_ids = sorted(t.client_id for t in unseen)
    logger.info(
        "world suite (seed %d): %d creatures, %d seen clients, %d unseen (%s)",
        seed,
        opts["entities"],
        len(seen),
        len(unseen_ids),
        ", ".join(unseen_ids),
    )
    return WorldSuite(clients=clients, unseen_ids=unseen_ids, world=world)


def pretraining_examples(n: int, rng: Generator) -> list[Example]:
    """`n` open-book questions, each about a fresh world of 2 to 5 creatures whose facts
    the input lists, for the base model's pretraining corpus."""
    out = []
    for _ in range(n):
        world = draw_world(int(rng.integers(2, 6)), rng)
        k = int(rng.integers(1, 3))
        attributes = [ATTRIBUTES[int(i)] for i in sorted(rng.permutation(len(ATTRIBUTES))[:k])]
        notes = "\n".join(
            f"{name}: " + ", ".join(f"{a} {world.values[a][i]}" for a in attributes)
            for i, name in enumerate(world.names)
        )
        entity = int(rng.integers(len(world.names)))
        name = world.names[entity]
        if k == 1:
            template = PRETRAINING_WORDINGS[int(rng.integers(len(PRETRAINING_WORDINGS)))]
            instruction = template.format(attribute=attributes[0], name=name)
        else:
            first, second = attributes
            instruction = PRETRAINING_COMPOSITION.format(first=first, second=second, name=name)
        out.append(
            Example(
                instruction=instruction,
                input=notes,
                output=" and ".join(world.values[a][entity] for a in attributes),
                category="world-notes",
            )
        )
    return out
