"""What a synthetic task family is: a generator of (instruction, input, output) triples.

A family (e.g. `reverse_words`) has several client variants: each variant is one task,
i.e. one federated client, with its own instruction wording and parameters. It also has
pretraining variants, with different wordings and parameters, that only the build of
the shipped base model uses: the base model knows the family and the prompt format, but
not the clients' exact tasks, so fine-tuning still has something to learn.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random import Generator

Params = Mapping[str, Any]
"""A variant's parameters; every variant has at least an 'instruction' string."""
Triple = tuple[str, str, str]
"""(instruction, input, output) of one example; input may be empty."""

# Fixed seed of the task definitions themselves (per-task look-up tables, keyword lists):
# a task is the same task whatever the suite seed, which only changes the sampled examples.
TASK_TABLE_SEED = 7_340_021


@dataclass(frozen=True)
class TaskFamily:
    """A family of related tasks; `make(variant, rng)` draws one example of a variant."""

    name: str
    make: Callable[[Params, Generator], Triple]
    variants: tuple[Params, ...]
    """Client tasks: variant k is the client `<name>-v<k>`."""
    pretrain_variants: tuple[Params, ...]
    """Wordings/parameters used only to pretrain the base model, disjoint from `variants`."""
    memorised: bool = False
    """True when answers come from a per-task table that no instruction states, so a
    held-out variant cannot be inferred; such variants are never chosen as unseen."""


def table_rng(key: str) -> Generator:
    """A generator fixed by `key` alone (not by the suite seed): for per-task tables."""
    return np.random.Generator(np.random.PCG64([TASK_TABLE_SEED, zlib.crc32(key.encode())]))


def yes_no(flag: bool, answers: tuple[str, str]) -> str:
    """answers[0] when flag is true, else answers[1] (e.g. ('yes', 'no'))."""
    return answers[0] if flag else answers[1]
