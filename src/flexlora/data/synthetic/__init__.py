"""Synthetic multi-task instruction data, one task per client, for offline runs.

`build_synthetic_suite(options, seed)` builds the suite `options["suite"]` names:
"world" (the default; see world.py), or "families", built by
`build_family_suite(options, seed)` from the task families of this package: every
client is one (family, variant) task with a stable readable id such as
`reverse_words-v2`, its category is the family name, and some families (all their
variants) and some variants of the other families are held out as unseen clients.
Everything is drawn with `numpy.random.Generator(PCG64(...))` from the seed, so the same
seed gives the same suite on any machine. All words are made up (see `words.py`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random import Generator

from flexlora.data.synthetic.family import Params, TaskFamily
from flexlora.data.synthetic.logic_families import LOGIC_FAMILIES
from flexlora.data.synthetic.text_families import TEXT_FAMILIES
from flexlora.data.synthetic.world import build_world_suite, with_defaults
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

FAMILIES: dict[str, TaskFamily] = {f.name: f for f in (*TEXT_FAMILIES, *LOGIC_FAMILIES)}
"""Every task family, by name (= the category of its examples)."""

DEFAULT_OPTIONS: dict[str, Any] = {  # of the "families" suite
    "num_clients": 40,
    "train_per_client": 64,
    "eval_per_client": 8,
    "test_per_client": 8,
    "unseen_families": ["wrap", "parity"],
    "unseen_variant_fraction": 0.1,
    "families": None,
}
"""Options of `data.synthetic` and their defaults.

num_clients: clients in the suite, seen and unseen together (at most the number of tasks).
train/eval/test_per_client: examples in each split of every client.
unseen_families: families held out entirely (all their variants become unseen clients).
unseen_variant_fraction: share of the other families' chosen clients also held out.
families: family names to use (null: all of them).
"""


@dataclass
class SyntheticSuite:
    """Clients by id, and the ids held out as unseen (never trained on, scored on)."""

    clients: dict[str, ClientData]
    unseen_ids: list[str]

    @property
    def seen_ids(self) -> list[str]:
        unseen = set(self.unseen_ids)
        return [c for c in self.clients if c not in unseen]


def client_id(family: str, variant: int) -> str:
    """The stable id of a task: '<family>-v<variant>'."""
    return f"{family}-v{variant}"


def _client_rng(seed: int, cid: str) -> Generator:
    """One generator per client, keyed by its id: a client's data does not depend on
    which other clients the suite holds."""
    return np.random.Generator(np.random.PCG64([seed, zlib.crc32(cid.encode())]))


def generate_examples(family: TaskFamily, variant: Params, n: int, rng: Generator) -> list[Example]:
    """`n` examples of one variant of `family`."""
    out = []
    for _ in range(n):
        instruction, text, answer = family.make(variant, rng)
        out.append(
            Example(instruction=instruction, input=text, output=answer, category=family.name)
        )
    return out


def _check_int(opts: Mapping[str, Any], key: str, minimum: int) -> int:
    value = opts[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FlexLoraError(f"data.synthetic.{key} must be an int >= {minimum}, got {value!r}")
    return value


def _check_names(opts: Mapping[str, Any], key: str, known: Sequence[str]) -> list[str]:
    value = opts[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FlexLoraError(f"data.synthetic.{key} must be a list of family names, got {value!r}")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise FlexLoraError(
            f"data.synthetic.{key}: unknown family {unknown[0]!r} (known: {', '.join(known)})"
        )
    return list(dict.fromkeys(value))


def _validated(options: Mapping[str, Any]) -> dict[str, Any]:
    opts = with_defaults(options, DEFAULT_OPTIONS, "families")
    _check_int(opts, "num_clients", 2)
    _check_int(opts, "train_per_client", 1)
    _check_int(opts, "eval_per_client", 0)
    _check_int(opts, "test_per_client", 1)
    opts["families"] = (
        list(FAMILIES)
        if opts["families"] is None
        else _check_names(opts, "families", list(FAMILIES))
    )
    if not opts["families"]:
        raise FlexLoraError("data.synthetic.families must name at least one family")
    opts["unseen_families"] = _check_names(opts, "unseen_families", opts["families"])
    fraction = opts["unseen_variant_fraction"]
    if (
        not isinstance(fraction, (int, float))
        or isinstance(fraction, bool)
        or not 0 <= fraction < 1
    ):
        raise FlexLoraError(
            f"data.synthetic.unseen_variant_fraction must be in [0, 1), got {fraction!r}"
        )
    return opts


def _choose_tasks(opts: Mapping[str, Any], rng: Generator) -> tuple[list[str], list[str]]:
    """(seen ids, unseen ids): every variant of the held-out families, then the other
    families' variants taken round-robin (so families stay balanced), then a fraction of
    those held out too, never a family's last seen variant nor a memorised variant."""
    held_families = opts["unseen_families"]
    unseen = [client_id(f, v) for f in held_families for v in range(len(FAMILIES[f].variants))]
    pools = {
        f: [client_id(f, int(v)) for v in rng.permutation(len(FAMILIES[f].variants))]
        for f in opts["families"]
        if f not in held_families
    }
    available = sum(len(p) for p in pools.values())
    budget = opts["num_clients"] - len(unseen)
    if budget < 1 or budget > available:
        raise FlexLoraError(
            f"data.synthetic.num_clients={opts['num_clients']} must be between "
            f"{len(unseen) + 1} and "
            f"{len(unseen) + available} with unseen_families={held_families} "
            f"({len(unseen)} held-out tasks, {available} other tasks)"
        )
    order = [str(f) for f in rng.permutation(list(pools))]
    chosen: dict[str, list[str]] = {f: [] for f in order}
    while budget > 0:
        for f in order:
            if budget > 0 and len(chosen[f]) < len(pools[f]):
                chosen[f].append(pools[f][len(chosen[f])])
                budget -= 1
    n_seen = sum(len(c) for c in chosen.values())
    n_hold = round(opts["unseen_variant_fraction"] * n_seen)
    candidates = [f for f in order if not FAMILIES[f].memorised]
    while n_hold > 0:
        open_families = [f for f in candidates if len(chosen[f]) > 1]
        if not open_families:
            logger.warning(
                "synthetic suite: could hold out only part of the requested unseen variants"
            )
            break
        for f in open_families:
            if n_hold > 0 and len(chosen[f]) > 1:
                unseen.append(chosen[f].pop())
                n_hold -= 1
    seen = [c for f in order for c in chosen[f]]
    return sorted(seen), sorted(unseen)


def _variant_of(cid: str) -> tuple[TaskFamily, Params]:
    family, _, v = cid.rpartition("-v")
    return FAMILIES[family], FAMILIES[family].variants[int(v)]


def build_synthetic_suite(options: Mapping[str, Any], seed: int) -> SyntheticSuite:
    """The suite `options["suite"]` names ("world", the default, or "families"), built
    from the rest of `options` for `seed`."""
    kind = options.get("suite", "world")
    if kind == "world":
        world = build_world_suite(options, seed)
        return SyntheticSuite(clients=world.clients, unseen_ids=world.unseen_ids)
    if kind == "families":
        return build_family_suite({k: v for k, v in options.items() if k != "suite"}, seed)
    raise FlexLoraError(f"data.synthetic.suite must be world or families, got {kind!r}")


def build_family_suite(options: Mapping[str, Any], seed: int) -> SyntheticSuite:
    """Build the task-family suite described by `options` (see DEFAULT_OPTIONS) for `seed`.

    Raises FlexLoraError on an unknown option, a bad value, or more clients than tasks.
    """
    opts = _validated(options)
    seen, unseen = _choose_tasks(opts, np.random.Generator(np.random.PCG64(seed)))
    sizes = (opts["train_per_client"], opts["eval_per_client"], opts["test_per_client"])
    clients: dict[str, ClientData] = {}
    for cid in sorted(seen + unseen):
        family, variant = _variant_of(cid)
        examples = generate_examples(family, variant, sum(sizes), _client_rng(seed, cid))
        n_train, n_eval, _ = sizes
        clients[cid] = ClientData(
            client_id=cid,
            train=examples[:n_train],
            eval=examples[n_train : n_train + n_eval],
            test=examples[n_train + n_eval :],
        )
    logger.info(
        "synthetic suite (seed %d): %d clients, %d unseen (%s)",
        seed,
        len(clients),
        len(unseen),
        ", ".join(unseen),
    )
    return SyntheticSuite(clients=clients, unseen_ids=unseen)


def pretraining_examples(
    n: int, rng: Generator, families: Sequence[str] | None = None
) -> list[Example]:
    """`n` examples of the families' pretraining-only variants, for the base model's build.

    Variants are drawn uniformly per example over every (family, pretraining variant).
    """
    chosen = [FAMILIES[f] for f in (families if families is not None else FAMILIES)]
    pairs = [(f, v) for f in chosen for v in f.pretrain_variants]
    out = []
    for _ in range(n):
        family, variant = pairs[int(rng.integers(len(pairs)))]
        out.extend(generate_examples(family, variant, 1, rng))
    return out


__all__ = [
    "DEFAULT_OPTIONS",
    "FAMILIES",
    "SyntheticSuite",
    "TaskFamily",
    "build_family_suite",
    "build_synthetic_suite",
    "client_id",
    "generate_examples",
    "pretraining_examples",
]
