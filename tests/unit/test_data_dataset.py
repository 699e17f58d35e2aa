"""load_federated_dataset end to end on fixtures, and describe_dataset's counts."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fixtures package
from fixtures.data_fixtures import (
    dolly_records,
    make_ni_folder,
    make_sni_folder,
    write_jsonl,
)
from flexlora.config import DataConfig, UnseenConfig
from flexlora.data.dataset import describe_dataset, load_federated_dataset
from flexlora.data.types import ClientData, Example, FederatedDataset
from flexlora.errors import FlexLoraError


def ids(fd: FederatedDataset) -> tuple[list[str], list[str]]:
    return list(fd.seen), list(fd.unseen)


@pytest.fixture
def ni_dir(tmp_path: Path) -> Path:
    sizes = {str(i): (6 + i % 3, 2, 2) for i in range(12)}
    return make_ni_folder(
        tmp_path / "ni", sizes, {str(i): ["Translation", "QA"][i % 2] for i in range(12)}
    )


def test_flexlora_ni_unseen_fraction_is_seeded_and_disjoint(ni_dir: Path) -> None:
    cfg = DataConfig(kind="flexlora-ni", path=str(ni_dir), unseen=UnseenConfig(fraction=0.25))
    a, b, c = (load_federated_dataset(cfg, s) for s in (0, 0, 1))
    assert ids(a) == ids(b)
    assert len(a.unseen) == 3 and len(a.seen) == 9
    assert not set(a.seen) & set(a.unseen)
    assert list(a.unseen) != list(c.unseen)
    assert a.source == f"flexlora-ni:{ni_dir}" and a.skipped == {}


def test_caps_keep_the_first_examples_and_count_the_rest(ni_dir: Path) -> None:
    cfg = DataConfig(
        kind="flexlora-ni", path=str(ni_dir), max_train_per_client=6, max_eval_per_client=1
    )
    fd = load_federated_dataset(cfg, 0)
    assert {len(c.train) for c in fd.seen.values()} == {6}
    assert {(len(c.eval), len(c.test)) for c in fd.seen.values()} == {(1, 1)}
    # clients 0..11 have 6 + i % 3 training examples: 4 x (0 + 1 + 2) over the cap
    assert fd.skipped == {"train_over_cap": 12, "eval_over_cap": 12, "test_over_cap": 12}
    assert fd.seen["1"].train[0].input == "0 2 1"  # the first ones are kept


def test_ni_tasks_uses_the_official_split_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = {"task1_a": 10, "task2_b": 10, "task3_c": 10, "task4_nonenglish": 10}
    root = make_sni_folder(tmp_path, tasks, ["task1_a", "task2_b"], ["task3_c", "task99_missing"])
    with caplog.at_level("INFO"):
        fd = load_federated_dataset(DataConfig(kind="ni-tasks", path=str(root)), 0)
    assert ids(fd) == (["task1_a", "task2_b"], ["task3_c"])
    assert fd.skipped == {"clients_outside_official_split": 1}
    assert "1 of 2 listed clients are not in this dataset" in caplog.text
    # an explicit hold-out replaces the official split (and its train list)
    fd = load_federated_dataset(
        DataConfig(kind="ni-tasks", path=str(root), unseen=UnseenConfig(ids=["task2_b"])), 0
    )
    assert ids(fd) == (["task1_a", "task3_c", "task4_nonenglish"], ["task2_b"])


def test_dolly_dirichlet_partition_is_deterministic_with_min_size(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dolly.jsonl", dolly_records(600, ["a", "b", "c", "d", "e", "f"]))
    cfg = DataConfig(
        kind="dolly",
        path=str(path),
        partition="dirichlet",
        num_clients=12,
        dirichlet_alpha=0.5,
        min_client_size=20,
        unseen=UnseenConfig(count=2),
    )
    a, b, c = (load_federated_dataset(cfg, s) for s in (3, 3, 4))
    sizes = [c_.train + c_.eval + c_.test for c_ in [*a.seen.values(), *a.unseen.values()]]
    assert min(len(s) for s in sizes) >= 20 and sum(len(s) for s in sizes) == 600
    assert ids(a) == ids(b) and len(a.unseen) == 2
    assert [x.train for x in a.seen.values()] == [x.train for x in b.seen.values()]
    assert [x.train for x in a.seen.values()] != [x.train for x in c.seen.values()]
    assert sorted(a.seen, key=int) == list(a.seen)


def test_jsonl_natural_partition_by_category_and_iid(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", dolly_records(30, ["x", "y"]))
    field_map = {"input": "context", "output": "response"}
    natural = load_federated_dataset(
        DataConfig(kind="jsonl", path=str(path), field_map=field_map), 0
    )
    assert list(natural.seen) == ["x", "y"]
    assert [(len(c.train), len(c.eval), len(c.test)) for c in natural.seen.values()] == [
        (13, 1, 1)
    ] * 2
    assert {e.category for e in natural.seen["y"].train} == {"y"}
    iid = load_federated_dataset(
        DataConfig(
            kind="jsonl", path=str(path), field_map=field_map, partition="iid", num_clients=3
        ),
        0,
    )
    assert list(iid.seen) == ["0", "1", "2"]
    assert sum(len(c.train) + len(c.eval) + len(c.test) for c in iid.seen.values()) == 30


def test_natural_partition_by_another_label_field(tmp_path: Path) -> None:
    rows = [{"instruction": f"i{k}", "output": "o", "user": f"u{k % 3}"} for k in range(9)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    fd = load_federated_dataset(DataConfig(kind="jsonl", path=str(path), label_field="user"), 0)
    assert list(fd.seen) == ["u0", "u1", "u2"]
    assert fd.seen["u1"].train[0] == Example("i1", "", "o", "default")


def test_flexlora_ni_can_be_repartitioned_iid(ni_dir: Path) -> None:
    fd = load_federated_dataset(
        DataConfig(kind="flexlora-ni", path=str(ni_dir), partition="iid", num_clients=4), 0
    )
    assert list(fd.seen) == ["0", "1", "2", "3"]
    assert (
        sum(len(c.train) + len(c.eval) + len(c.test) for c in fd.seen.values())
        == 4 * 6 + 4 * 7 + 4 * 8 + 48
    )
    with pytest.raises(
        FlexLoraError, match=r"data.label_field='user': flexlora-ni examples only carry 'category'"
    ):
        load_federated_dataset(
            DataConfig(
                kind="flexlora-ni",
                path=str(ni_dir),
                partition="dirichlet",
                num_clients=2,
                label_field="user",
            ),
            0,
        )


def test_bad_template_fails_before_loading(tmp_path: Path) -> None:
    cfg = DataConfig(
        kind="jsonl", path=str(tmp_path / "absent.jsonl"), template="custom", custom_template="{x}"
    )
    with pytest.raises(FlexLoraError, match=r"unknown placeholder \{x\}"):
        load_federated_dataset(cfg, 0)


@dataclass
class FakeSuite:
    clients: dict[str, ClientData]
    unseen_ids: list[str]


def test_synthetic_uses_the_suite_and_its_recommended_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[dict[str, Any], int]] = []

    def build(options: dict[str, Any], seed: int) -> FakeSuite:
        calls.append((options, seed))
        clients = {
            f"t{k}": ClientData(f"t{k}", [Example("i", "x", "y", f"fam{k % 2}")] * 4, [], [])
            for k in range(5)
        }
        return FakeSuite(clients, ["t3"])

    module = types.ModuleType("flexlora.data.synthetic")
    module.build_synthetic_suite = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flexlora.data.synthetic", module)
    fd = load_federated_dataset(DataConfig(kind="synthetic", synthetic={"families": 2}), 7)
    assert calls == [({"families": 2}, 7)]
    assert ids(fd) == (["t0", "t1", "t2", "t4"], ["t3"]) and fd.source == "synthetic"
    fd = load_federated_dataset(
        DataConfig(kind="synthetic", unseen=UnseenConfig(ids=["t0", "t1"])), 7
    )
    assert list(fd.unseen) == ["t0", "t1"]


def test_describe_dataset_counts(ni_dir: Path) -> None:
    fd = load_federated_dataset(
        DataConfig(kind="flexlora-ni", path=str(ni_dir), unseen=UnseenConfig(ids=["0", "1"])), 0
    )
    summary = describe_dataset(fd, top_categories=1)
    assert summary["clients"] == {"seen": 10, "unseen": 2}
    seen_train = summary["examples_per_client"]["seen"]["train"]
    # clients 2..11 have 6 + i % 3 training examples: 8 6 7 8 6 7 8 6 7 8
    assert seen_train == {"min": 6, "median": 7.0, "max": 8, "total": 71}
    assert summary["examples_per_client"]["unseen"]["train"] == {
        "min": 6,
        "median": 6.5,
        "max": 7,
        "total": 13,
    }
    # each category: 6 clients, (6 + 7 + 8) x 2 training + 6 x 4 eval/test examples;
    # a tie is broken by name
    assert summary["categories"] == [
        {"category": "QA", "examples": 66, "clients": 6},
        {"category": "other (1 categories)", "examples": 66, "clients": 6},
    ]
    assert summary["num_categories"] == 2 and summary["unseen_ids"] == ["0", "1"]
