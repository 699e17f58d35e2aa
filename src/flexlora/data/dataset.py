"""`load_federated_dataset`: a DataConfig and a seed -> seen and unseen clients.

source loader -> partition (natural / dirichlet / iid) -> unseen hold-out -> per-client
caps -> FederatedDataset, with everything left out on purpose counted in `skipped`.

Determinism: one `numpy.random.SeedSequence(seed)` spawns two independent PCG64
generators, one for the partition and one for the unseen choice, so that the same seed
gives the same federation on every machine (and changing the partition cannot shift
which clients are held out of a natural split).

Caps: `max_train_per_client` keeps the first N training examples of each client;
`max_eval_per_client` keeps the first N of the eval and of the test split (both are
evaluation data). Dropped examples are counted as train_over_cap / eval_over_cap /
test_over_cap.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexlora.config import DataConfig, UnseenConfig
from flexlora.data.partition import (
    dirichlet_partition,
    iid_partition,
    natural_partition,
    select_unseen,
    sort_ids,
    split_train_eval_test,
)
from flexlora.data.sources.flexlora_ni import load_flexlora_ni
from flexlora.data.sources.ni_tasks import load_ni_tasks, official_split
from flexlora.data.sources.records import (
    RecordPool,
    load_dolly_pool,
    load_file_pool,
    load_hf_pool,
)
from flexlora.data.templates import check_template
from flexlora.data.types import ClientData, Example, FederatedDataset
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "test")


@dataclass
class LoadedSource:
    """What a source loader hands to the partition step."""

    origin: str
    clients: dict[str, ClientData] | None = None
    """Client-shaped sources (flexlora-ni, ni-tasks, synthetic): their natural clients."""
    pool: RecordPool | None = None
    """Flat sources (dolly, jsonl, hf): examples still to be partitioned."""
    default_unseen: list[str] | None = None
    default_origin: str = ""
    train_only: list[str] | None = None
    """When the default split is used, only these clients may be seen (SNI's train_tasks.txt)."""


def _generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent PCG64 streams from one seed: (partition, unseen choice)."""
    partition, unseen = (
        np.random.Generator(np.random.PCG64(child))
        for child in np.random.SeedSequence(seed).spawn(2)
    )
    return partition, unseen


def _needs_strict_labels(cfg: DataConfig) -> bool:
    # dirichlet is a partition over the label: every record must carry it. A natural split
    # by our own category field may fall back on "default" for records without one.
    return cfg.partition == "dirichlet" or (
        cfg.partition == "natural" and cfg.label_field != "category"
    )


def _load_source(cfg: DataConfig, seed: int) -> LoadedSource:
    label = cfg.label_field if _needs_strict_labels(cfg) else None
    origin = f"{cfg.kind}:{cfg.path}"
    if cfg.kind == "flexlora-ni":
        return LoadedSource(origin, clients=load_flexlora_ni(cfg.path))
    if cfg.kind == "ni-tasks":
        clients = load_ni_tasks(cfg.path)
        split = official_split(cfg.path or "")
        return LoadedSource(
            origin,
            clients=clients,
            default_unseen=split.test,
            default_origin=str(split.test_file),
            train_only=split.train if split.test is not None else None,
        )
    if cfg.kind == "dolly":
        return LoadedSource(origin, pool=load_dolly_pool(cfg.path, cfg.field_map, label))
    if cfg.kind == "jsonl":
        return LoadedSource(origin, pool=load_file_pool(cfg.path, cfg.field_map, label))
    if cfg.kind == "hf":
        return LoadedSource(origin, pool=load_hf_pool(cfg.path, cfg.hf_split, cfg.field_map, label))
    if cfg.kind == "synthetic":
        # lazy: the suite is only needed for the offline default
        from flexlora.data.synthetic import build_synthetic_suite

        suite = build_synthetic_suite(cfg.synthetic, seed)
        return LoadedSource(
            "synthetic",
            clients=dict(suite.clients),
            default_unseen=list(suite.unseen_ids),
            default_origin="the synthetic suite's held-out tasks",
        )
    raise FlexLoraError(f"data.kind: unknown source {cfg.kind!r}")


def _pool_of_clients(clients: dict[str, ClientData], cfg: DataConfig, origin: str) -> RecordPool:
    """Every example of a client-shaped source, for a dirichlet / iid re-partition."""
    if cfg.partition == "dirichlet" and cfg.label_field != "category":
        raise FlexLoraError(
            f"data.label_field={cfg.label_field!r}: {cfg.kind} examples only carry 'category'"
        )
    examples = [e for c in clients.values() for split in SPLITS for e in getattr(c, split)]
    return RecordPool(examples, [e.category for e in examples], origin)


def _clients_from_groups(pool: RecordPool, groups: dict[str, np.ndarray]) -> dict[str, ClientData]:
    clients: dict[str, ClientData] = {}
    for cid, indices in groups.items():
        train, eval_, test = split_train_eval_test([pool.examples[i] for i in indices])
        clients[cid] = ClientData(cid, train, eval_, test)
    return clients


def _partition(
    source: LoadedSource, cfg: DataConfig, rng: np.random.Generator
) -> dict[str, ClientData]:
    if source.clients is not None and cfg.partition == "natural":
        return source.clients
    pool = (
        source.pool
        if source.pool is not None
        else _pool_of_clients(source.clients or {}, cfg, source.origin)
    )
    labels = pool.labels if pool.labels is not None else [e.category for e in pool.examples]
    if cfg.partition == "natural":
        return _clients_from_groups(pool, natural_partition(labels))
    num_clients = cfg.num_clients or 0  # DataConfig guarantees >= 1 for dirichlet / iid
    if cfg.partition == "iid":
        parts = iid_partition(len(pool.examples), num_clients, rng)
    else:
        parts = dirichlet_partition(
            labels, num_clients, cfg.dirichlet_alpha, cfg.min_client_size, rng
        )
    return _clients_from_groups(pool, {str(k): part for k, part in enumerate(parts)})


def _cap(client: ClientData, cfg: DataConfig, skipped: Counter[str]) -> ClientData:
    limits = {
        "train": cfg.max_train_per_client,
        "eval": cfg.max_eval_per_client,
        "test": cfg.max_eval_per_client,
    }
    kept: dict[str, list[Example]] = {}
    for split, limit in limits.items():
        examples: list[Example] = getattr(client, split)
        if limit is not None and len(examples) > limit:
            skipped[f"{split}_over_cap"] += len(examples) - limit
            examples = examples[:limit]
        kept[split] = examples
    return ClientData(client.client_id, kept["train"], kept["eval"], kept["test"])


def load_federated_dataset(cfg: DataConfig, seed: int) -> FederatedDataset:
    """Load, partition, hold out unseen clients and cap: the federation a run trains on."""
    check_template(cfg.template, cfg.custom_template)  # fail before any long load
    partition_rng, unseen_rng = _generators(seed)
    source = _load_source(cfg, seed)
    clients = _partition(source, cfg, partition_rng)
    ids = sort_ids(list(clients))
    unseen_ids = select_unseen(
        ids, cfg.unseen, unseen_rng, source.default_unseen, source.default_origin
    )
    skipped: Counter[str] = Counter()
    held_out = set(unseen_ids)
    seen_ids = [cid for cid in ids if cid not in held_out]
    if source.train_only is not None and cfg.unseen == UnseenConfig():
        allowed = set(source.train_only)
        outside = [cid for cid in seen_ids if cid not in allowed]
        if outside:
            skipped["clients_outside_official_split"] = len(outside)
            log.info("%d tasks are in neither official split list: left out", len(outside))
            seen_ids = [cid for cid in seen_ids if cid in allowed]
        if not seen_ids:
            raise FlexLoraError(f"{source.origin}: no task of train_tasks.txt is in tasks/")
    seen = {cid: _cap(clients[cid], cfg, skipped) for cid in seen_ids}
    unseen = {cid: _cap(clients[cid], cfg, skipped) for cid in unseen_ids}
    for reason, count in sorted(skipped.items()):
        log.info("skipped on purpose: %s = %d", reason, count)
    log.info("%s: %d seen and %d unseen clients", source.origin, len(seen), len(unseen))
    return FederatedDataset(seen=seen, unseen=unseen, source=source.origin, skipped=dict(skipped))


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0, "total": 0}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "total": sum(values),
    }


def describe_dataset(dataset: FederatedDataset, top_categories: int = 20) -> dict[str, Any]:
    """Counts for `flexlora data inspect` and run summaries (plain JSON-able values).

    examples per client (min / median / max / total) for seen and unseen clients per
    split; a category histogram (examples and clients per category, the largest
    `top_categories` then one "other" row); the held-out ids; skipped counts.
    """
    groups = {"seen": dataset.seen, "unseen": dataset.unseen}
    per_client = {
        group: {
            split: _spread([len(getattr(c, split)) for c in clients.values()]) for split in SPLITS
        }
        for group, clients in groups.items()
    }
    examples: Counter[str] = Counter()
    holders: dict[str, set[str]] = {}
    for clients in groups.values():
        for c in clients.values():
            for split in SPLITS:
                for e in getattr(c, split):
                    examples[e.category] += 1
                    holders.setdefault(e.category, set()).add(c.client_id)
    ranked = sorted(examples, key=lambda cat: (-examples[cat], cat))
    histogram = [
        {"category": cat, "examples": examples[cat], "clients": len(holders[cat])} for cat in ranked
    ]
    if len(histogram) > top_categories:
        rest = ranked[top_categories:]
        other_clients = set().union(*(holders[cat] for cat in rest))
        histogram = [
            *histogram[:top_categories],
            {
                "category": f"other ({len(rest)} categories)",
                "examples": sum(examples[cat] for cat in rest),
                "clients": len(other_clients),
            },
        ]
    return {
        "source": dataset.source,
        "clients": {"seen": len(dataset.seen), "unseen": len(dataset.unseen)},
        "examples_per_client": per_client,
        "categories": histogram,
        "num_categories": len(ranked),
        "unseen_ids": list(dataset.unseen),
        "skipped": dict(sorted(dataset.skipped.items())),
    }
