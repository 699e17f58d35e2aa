"""Federated partitions of a pool of examples, per-client splits, and unseen clients.

Everything here is a pure function of its inputs and an explicit
`numpy.random.Generator`: the same seed gives the same partition on every machine
(ids are sorted with a natural key before any random choice; no Python `hash()`, no
set iteration order).

- natural: one client per label value (per task / per category).
- iid: a random permutation cut into `num_clients` near-equal parts.
- dirichlet: label-wise Dirichlet proportions (Hsu et al. 2019) with a minimum client
  size, resampled until every client reaches it (bounded attempts, then a clear
  error). Like FederatedScope's splitter, which the FlexLoRA authors ran, a client
  that already holds its even share (n / K) receives no more of the next label
  ("balancing"): without it a 200-client Dolly split with alpha 0.5 almost never meets
  a minimum size of 10.

Why not flwr-datasets' DirichletPartitioner / IidPartitioner: they partition a Hugging
Face `datasets.Dataset` (our pool is a list of `Example`s, and kind=flexlora-ni and
ni-tasks never build one), take an int seed rather than a Generator, and version 0.6
pins `datasets<5` (this project runs datasets 5) and pulls seaborn. The maths is ~40
lines below, tested for determinism and the minimum size.

Per-client train / eval / test: positional 80 / 10 / 10 (`split_train_eval_test`),
independent of the seed, so that every seed scores the same test examples.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from flexlora.config import UnseenConfig
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

T = TypeVar("T")

EVAL_FRACTION = 0.1
TEST_FRACTION = 0.1
DIRICHLET_MAX_ATTEMPTS = 200

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "2" before "10" and "task9_x" before "task10_x"."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(text) if p)


def sort_ids(ids: Sequence[str]) -> list[str]:
    """Client ids in natural order (the order every random choice starts from)."""
    return sorted(ids, key=natural_key)


def natural_partition(labels: Sequence[str]) -> dict[str, np.ndarray]:
    """One client per label value: label -> indices of its examples, in input order."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return {label: np.asarray(groups[label], dtype=np.int64) for label in sort_ids(list(groups))}


def iid_partition(
    num_examples: int, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """A random permutation of the examples cut into `num_clients` parts (sizes differ by <= 1)."""
    if num_clients > num_examples:
        raise FlexLoraError(
            f"data.num_clients={num_clients} exceeds the {num_examples} examples: "
            "some clients would be empty"
        )
    return [
        part.astype(np.int64) for part in np.array_split(rng.permutation(num_examples), num_clients)
    ]


def dirichlet_partition(
    labels: Sequence[str],
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
    max_attempts: int = DIRICHLET_MAX_ATTEMPTS,
) -> list[np.ndarray]:
    """Label-wise Dirichlet partition with balancing; every client gets >= `min_size` examples.

    For each label (in sorted order) its shuffled examples are cut by proportions
    p ~ Dir(alpha · 1_K), where clients already at n / K get p = 0. The whole draw is
    repeated until the smallest client reaches `min_size`. Each client's indices are
    shuffled so that its positional train / eval / test split mixes labels.
    """
    n = len(labels)
    min_size = max(1, min_size)  # an empty client is never useful
    if num_clients * min_size > n:
        raise FlexLoraError(
            f"dirichlet partition: {num_clients} clients x data.min_client_size={min_size} "
            f"exceeds the {n} examples"
        )
    by_label = natural_partition(labels)
    share = n / num_clients
    smallest = 0
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for indices in by_label.values():
            shuffled = rng.permutation(indices)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * (sizes < share)  # balancing: full clients take no more
            if p.sum() <= 0:  # tiny alpha can underflow every open client's share to 0
                p = (sizes < share).astype(np.float64)
            p = p / p.sum()
            # cumulative proportions -> cut points into this label's examples
            cuts = (np.cumsum(p)[:-1] * len(shuffled)).astype(np.int64)
            for k, chunk in enumerate(np.split(shuffled, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return [rng.permutation(np.concatenate(chunks)) for chunks in parts]
    raise FlexLoraError(
        f"dirichlet partition: no draw gave every one of {num_clients} clients "
        f"data.min_client_size={min_size} examples in {max_attempts} attempts "
        f"(alpha={alpha}, smallest client {smallest}); "
        "lower min_client_size or num_clients, or raise alpha"
    )


def split_train_eval_test(
    items: Sequence[T], eval_fraction: float = EVAL_FRACTION, test_fraction: float = TEST_FRACTION
) -> tuple[list[T], list[T], list[T]]:
    """Positional split: the first ~80% train, then ~10% eval, then ~10% test.

    eval and test get floor(fraction · n) items each, but at least one once n >= 3, so
    that a small client still has something to score; train keeps the rest.
    """
    n = len(items)
    n_eval = max(1, math.floor(eval_fraction * n)) if n >= 3 else 0
    n_test = max(1, math.floor(test_fraction * n)) if n >= 3 else 0
    n_train = n - n_eval - n_test
    return (
        list(items[:n_train]),
        list(items[n_train : n_train + n_eval]),
        list(items[n_train + n_eval :]),
    )


def read_split_file(path: str | Path) -> list[str]:
    """Names one a line (blank lines and '#' comments skipped), as SNI's splits/*/test_tasks.txt."""
    p = Path(path)
    if not p.is_file():
        raise FlexLoraError(f"data.unseen.split_file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FlexLoraError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    names = [line.strip() for line in lines]
    return [name for name in names if name and not name.startswith("#")]


def _from_names(names: Sequence[str], client_ids: Sequence[str], origin: str) -> list[str]:
    known = set(client_ids)
    present = [name for name in dict.fromkeys(names) if name in known]
    missing = len(dict.fromkeys(names)) - len(present)
    if missing:
        log.info("%s: %d of %d listed clients are not in this dataset", origin, missing, len(names))
    if names and not present:
        raise FlexLoraError(f"{origin}: none of its {len(names)} names is a client of this dataset")
    return present


def select_unseen(
    client_ids: Sequence[str],
    unseen: UnseenConfig,
    rng: np.random.Generator,
    default_ids: Sequence[str] | None = None,
    default_origin: str = "the dataset's default split",
) -> list[str]:
    """The held-out clients, in natural order: never sampled for training.

    count / fraction choose with `rng` from the naturally sorted ids; `ids` must all
    exist; `split_file` lists names (those absent from the dataset are logged). When
    `unseen` sets nothing, `default_ids` (a source's own split, e.g. SNI's
    test_tasks.txt or the synthetic suite's held-out tasks) are used. At least one
    client always stays seen.
    """
    ids = sort_ids(client_ids)
    if unseen.ids is not None:
        known = set(ids)
        for cid in unseen.ids:
            if cid not in known:
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                raise FlexLoraError(f"data.unseen.ids: unknown client {cid!r} (clients: {shown})")
        chosen = list(dict.fromkeys(unseen.ids))
    elif unseen.split_file is not None:
        names = read_split_file(unseen.split_file)
        chosen = _from_names(names, ids, f"data.unseen.split_file {unseen.split_file}")
    elif unseen.count is not None or unseen.fraction is not None:
        if unseen.count is not None:
            k = unseen.count
        else:
            fraction = unseen.fraction or 0.0
            # round half up (not Python's half-to-even), at least one when asked for any
            k = max(1, math.floor(fraction * len(ids) + 0.5)) if fraction > 0 else 0
        if k >= len(ids):
            raise FlexLoraError(
                f"data.unseen: holding out {k} of {len(ids)} clients leaves none to train on"
            )
        picked = rng.choice(len(ids), size=k, replace=False) if k else np.empty(0, dtype=np.int64)
        chosen = [ids[i] for i in sorted(int(i) for i in picked)]
    elif default_ids is not None:
        chosen = _from_names(list(default_ids), ids, default_origin)
    else:
        chosen = []
    if len(chosen) >= len(ids):
        raise FlexLoraError(
            f"data.unseen: all {len(ids)} clients are held out; none is left to train on"
        )
    return sort_ids(chosen)
