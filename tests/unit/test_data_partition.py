"""Partitions (natural / iid / dirichlet), per-client splits and the unseen hold-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexlora.config import UnseenConfig
from flexlora.data.partition import (
    dirichlet_partition,
    iid_partition,
    natural_partition,
    select_unseen,
    sort_ids,
    split_train_eval_test,
)
from flexlora.errors import FlexLoraError


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


LABELS = [f"c{i % 5}" for i in range(1000)] + ["rare"] * 7


def test_sort_ids_is_natural() -> None:
    assert sort_ids(["10", "2", "1", "task10_b", "task9_a"]) == [
        "1",
        "2",
        "10",
        "task9_a",
        "task10_b",
    ]


def test_natural_partition_groups_by_label_in_input_order() -> None:
    groups = natural_partition(["b", "a", "b", "c", "a"])
    assert list(groups) == ["a", "b", "c"]
    assert [g.tolist() for g in groups.values()] == [[1, 4], [0, 2], [3]]


def test_iid_partition_covers_every_example_once_with_near_equal_sizes() -> None:
    parts = iid_partition(103, 10, rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_iid_partition_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    a, b, c = (
        iid_partition(50, 5, rng(1)),
        iid_partition(50, 5, rng(1)),
        iid_partition(50, 5, rng(2)),
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_partition_refuses_more_clients_than_examples() -> None:
    with pytest.raises(FlexLoraError, match=r"data.num_clients=6 exceeds the 5 examples"):
        iid_partition(5, 6, rng(0))


def test_dirichlet_partition_honours_min_size_and_covers_every_example_once() -> None:
    parts = dirichlet_partition(LABELS, num_clients=20, alpha=0.5, min_size=15, rng=rng(0))
    assert len(parts) == 20
    assert min(len(p) for p in parts) >= 15
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))


def test_dirichlet_partition_is_deterministic_and_skewed() -> None:
    a = dirichlet_partition(LABELS, 20, 0.1, 5, rng(3))
    b = dirichlet_partition(LABELS, 20, 0.1, 5, rng(3))
    c = dirichlet_partition(LABELS, 20, 0.1, 5, rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # small alpha: a typical client is dominated by one label (an iid client would hold ~20%)
    top_share = [np.unique(np.asarray(LABELS)[p], return_counts=True)[1].max() / len(p) for p in a]
    assert float(np.median(top_share)) > 0.6


def test_dirichlet_partition_errors_when_min_size_cannot_be_met() -> None:
    with pytest.raises(
        FlexLoraError, match=r"10 clients x data.min_client_size=200 exceeds the 1007"
    ):
        dirichlet_partition(LABELS, 10, 0.5, 200, rng(0))
    with pytest.raises(
        FlexLoraError,
        match=r"no draw gave every one of 50 clients data.min_client_size=20 .* in 3 attempts",
    ):
        dirichlet_partition(LABELS, 50, 0.01, 20, rng(0), max_attempts=3)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, (0, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (10, (8, 1, 1)), (25, (21, 2, 2))],
)
def test_split_train_eval_test_is_positional_80_10_10(n: int, sizes: tuple[int, int, int]) -> None:
    train, eval_, test = split_train_eval_test(list(range(n)))
    assert (len(train), len(eval_), len(test)) == sizes
    assert train + eval_ + test == list(range(n))


IDS = [str(i) for i in range(20)]


def test_unseen_by_count_is_seeded_sorted_and_never_everything() -> None:
    a = select_unseen(IDS, UnseenConfig(count=4), rng(0))
    assert a == select_unseen(
        list(reversed(IDS)), UnseenConfig(count=4), rng(0)
    )  # input order irrelevant
    assert a == sort_ids(a) and len(set(a)) == 4
    assert a != select_unseen(IDS, UnseenConfig(count=4), rng(1))
    with pytest.raises(FlexLoraError, match="holding out 20 of 20 clients leaves none to train on"):
        select_unseen(IDS, UnseenConfig(count=20), rng(0))


@pytest.mark.parametrize(("fraction", "k"), [(0.0, 0), (0.01, 1), (0.1, 2), (0.125, 3), (0.5, 10)])
def test_unseen_by_fraction_rounds_half_up_with_at_least_one(fraction: float, k: int) -> None:
    assert len(select_unseen(IDS, UnseenConfig(fraction=fraction), rng(0))) == k


def test_unseen_by_ids_and_unknown_id() -> None:
    assert select_unseen(IDS, UnseenConfig(ids=["12", "3", "3"]), rng(0)) == ["3", "12"]
    with pytest.raises(
        FlexLoraError, match=r"data.unseen.ids: unknown client '99' \(clients: 0, 1, 2, 3, 4, ...\)"
    ):
        select_unseen(IDS, UnseenConfig(ids=["3", "99"]), rng(0))


def test_unseen_by_split_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    split = tmp_path / "test_tasks.txt"
    split.write_text("# held out\n5\n\n17\nnot_a_client\n")
    with caplog.at_level("INFO"):
        assert select_unseen(IDS, UnseenConfig(split_file=str(split)), rng(0)) == ["5", "17"]
    assert "1 of 3 listed clients are not in this dataset" in caplog.text
    split.write_text("x\ny\n")
    with pytest.raises(FlexLoraError, match="none of its 2 names is a client of this dataset"):
        select_unseen(IDS, UnseenConfig(split_file=str(split)), rng(0))
    with pytest.raises(FlexLoraError, match=r"data.unseen.split_file not found: .*missing.txt"):
        select_unseen(IDS, UnseenConfig(split_file=str(tmp_path / "missing.txt")), rng(0))


def test_unseen_default_ids_apply_only_when_nothing_is_set() -> None:
    assert select_unseen(IDS, UnseenConfig(), rng(0), default_ids=["7", "2"]) == ["2", "7"]
    assert select_unseen(IDS, UnseenConfig(count=0), rng(0), default_ids=["7"]) == []
    assert select_unseen(IDS, UnseenConfig(), rng(0)) == []


def test_golden_values_pin_the_streams_across_machines() -> None:
    # Hard-coded outputs of PCG64(0): a change here means a federation is no longer the
    # same for the same seed (numpy stream change, or a change in how we draw).
    assert select_unseen(IDS, UnseenConfig(count=4), rng(0)) == ["5", "9", "11", "14"]
    assert [p.tolist() for p in iid_partition(10, 3, rng(0))] == [
        [4, 6, 2, 7],
        [3, 5, 9],
        [0, 8, 1],
    ]
    parts = dirichlet_partition([f"c{i % 3}" for i in range(30)], 4, 0.5, 3, rng(0))
    assert [len(p) for p in parts] == [9, 5, 7, 9]
    assert parts[0].tolist() == [20, 11, 23, 12, 8, 29, 26, 5, 14]
