"""The data layer on the real material in ../shared/assets (skipped, visibly, when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flexlora.config import DataConfig, UnseenConfig
from flexlora.data.dataset import load_federated_dataset
from flexlora.data.tokenize import TokenizedCache

ASSETS = (Path(__file__).resolve().parents[2] / "../shared/assets").resolve()
NI_ALL = ASSETS / "ni-flexlora" / "all-1612-clients-20-5-5"
NI_64 = ASSETS / "ni-flexlora" / "en-64-clients-100-20-20"
DOLLY = ASSETS / "dolly" / "databricks-dolly-15k.jsonl"
STORIES = ASSETS / "models" / "stories260K"


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"../shared/assets not found: {path}")


def totals(fd: object) -> tuple[int, int, int]:
    clients = [*fd.seen.values(), *fd.unseen.values()]  # type: ignore[attr-defined]
    return tuple(sum(len(getattr(c, s)) for c in clients) for s in ("train", "eval", "test"))  # type: ignore[return-value]


def test_all_1612_flexlora_ni_clients_load_with_the_right_counts() -> None:
    need(NI_ALL)
    fd = load_federated_dataset(
        DataConfig(kind="flexlora-ni", path=str(NI_ALL), unseen=UnseenConfig(fraction=0.1)), 0
    )
    assert len(fd.seen) + len(fd.unseen) == 1612 and len(fd.unseen) == 161
    assert totals(fd) == (31_343, 6_992, 7_225)
    manifest = json.loads((NI_ALL / "manifest.json").read_text())
    assert sorted(map(int, [*fd.seen, *fd.unseen])) == list(
        range(len(manifest["original_client_ids"]))
    )
    categories = {e.category for c in fd.seen.values() for e in c.train}
    assert "Translation" in categories and not any(cat.endswith(".json") for cat in categories)


def test_the_64_client_subset() -> None:
    need(NI_64)
    fd = load_federated_dataset(
        DataConfig(kind="flexlora-ni", path=str(NI_64), unseen=UnseenConfig(count=8)), 0
    )
    assert (len(fd.seen), len(fd.unseen)) == (56, 8)
    assert totals(fd) == (6_400, 1_240, 1_254)
    assert {len(c.train) for c in fd.seen.values()} == {100}
    manifest = json.loads((NI_64 / "manifest.json").read_text())
    assert sorted(e.train[0].category for e in [*fd.seen.values(), *fd.unseen.values()]) == sorted(
        manifest["categories"]
    )


def test_dolly_dirichlet_partition_is_deterministic_and_honours_the_minimum_size() -> None:
    need(DOLLY)
    cfg = DataConfig(
        kind="dolly",
        path=str(DOLLY),
        partition="dirichlet",
        num_clients=200,
        dirichlet_alpha=0.5,
        min_client_size=10,
        unseen=UnseenConfig(fraction=0.1),
    )
    a, b, c = (load_federated_dataset(cfg, seed) for seed in (0, 0, 1))
    assert (len(a.seen), len(a.unseen)) == (180, 20)
    assert sum(totals(a)) == 15_011
    sizes = [
        len(x.train) + len(x.eval) + len(x.test) for x in [*a.seen.values(), *a.unseen.values()]
    ]
    assert min(sizes) >= 10
    assert list(a.unseen) == list(b.unseen) and list(a.unseen) != list(c.unseen)
    assert all(x.train == y.train for x, y in zip(a.seen.values(), b.seen.values(), strict=True))
    assert any(x.train != y.train for x, y in zip(a.seen.values(), c.seen.values(), strict=True))
    # non-iid: most clients are dominated by a category (Dolly's largest covers ~25% overall)
    shares = []
    for x in a.seen.values():
        _, counts = np.unique([e.category for e in x.train], return_counts=True)
        shares.append(counts.max() / counts.sum())
    assert float(np.median(shares)) > 0.4


def test_the_64_client_subset_tokenises_with_stories260k_and_caches(tmp_path: Path) -> None:
    need(NI_64)
    need(STORIES)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    cfg = DataConfig(kind="flexlora-ni", path=str(NI_64), max_length=512, cache_dir=str(tmp_path))
    fd = load_federated_dataset(cfg, 0)
    first = TokenizedCache(cfg.cache_dir).load_or_tokenize(fd, tokenizer, cfg)
    second = TokenizedCache(cfg.cache_dir).load_or_tokenize(
        load_federated_dataset(cfg, 0), tokenizer, cfg
    )
    assert not first.from_cache and second.from_cache and first.counts == second.counts
    kept = sum(len(first.split(cid, "train")) for cid in fd.seen)
    assert (
        kept + sum(first.split(cid, "train").counts["dropped_no_target"] for cid in fd.seen)
        == 6_400
    )
    ex = second.split("0", "train")[0]
    assert len(ex.input_ids) <= 512 and ex.input_ids[0].item() == tokenizer.bos_token_id
    assert (ex.labels[: ex.prompt_length] == -100).all() and (
        ex.labels[ex.prompt_length :] >= 0
    ).all()
