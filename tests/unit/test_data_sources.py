"""Source loaders on generated fixtures: flexlora-ni, ni-tasks, jsonl / json, dolly, hf path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fixtures package
from fixtures.data_fixtures import (
    dolly_records,
    make_ni_folder,
    make_sni_folder,
    record,
    sni_task,
    write_jsonl,
)
from flexlora.data.sources.flexlora_ni import load_flexlora_ni
from flexlora.data.sources.ni_tasks import load_ni_tasks, official_split
from flexlora.data.sources.records import (
    load_dolly_pool,
    load_file_pool,
    load_hf_pool,
    pool_from_dataset,
)
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

# ---------------------------------------------------------------- flexlora-ni


def test_flexlora_ni_loads_clients_in_numeric_order_with_their_splits(tmp_path: Path) -> None:
    root = make_ni_folder(tmp_path / "ni", {"10": (4, 2, 1), "2": (3, 1, 1), "0": (5, 2, 2)})
    clients = load_flexlora_ni(root)
    assert list(clients) == ["0", "2", "10"]
    assert [(len(c.train), len(c.eval), len(c.test)) for c in clients.values()] == [
        (5, 2, 2),
        (3, 1, 1),
        (4, 2, 1),
    ]
    first = clients["2"].train[0]
    assert first == Example("Sort the numbers of task Category2.", "0 2 1", "0 1 2", "Category2")


def test_flexlora_ni_strips_the_task_file_from_the_category(tmp_path: Path) -> None:
    root = make_ni_folder(tmp_path, {"0": (2, 1, 1)}, categories={"0": "Question Answering"})
    assert load_flexlora_ni(root)["0"].train[1].category == "Question Answering"


def test_flexlora_ni_missing_input_and_category_get_defaults(tmp_path: Path) -> None:
    root = make_ni_folder(tmp_path, {"0": (1, 1, 1)})
    (root / "local_training_0.json").write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    assert load_flexlora_ni(root)["0"].train == [Example("i", "", "o", "default")]


def test_flexlora_ni_bad_inputs_name_the_file_and_record(tmp_path: Path) -> None:
    root = make_ni_folder(tmp_path, {"0": (3, 1, 1), "1": (2, 1, 1)})
    train = root / "local_training_1.json"

    train.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ')
    with pytest.raises(FlexLoraError) as err:
        load_flexlora_ni(root)
    assert str(err.value).startswith(f"{train}: broken JSON at line 2 column 18 (char 55)")

    train.write_text(json.dumps([record(0), {"instruction": "x", "input": ""}]))
    with pytest.raises(
        FlexLoraError, match=rf"^{train} record 1: missing required field 'output'$"
    ):
        load_flexlora_ni(root)

    train.write_text(json.dumps([record(0, output=["a"])]))
    with pytest.raises(
        FlexLoraError, match=rf"^{train} record 0: field 'output' must be a string$"
    ):
        load_flexlora_ni(root)

    train.write_text("[]")
    with pytest.raises(FlexLoraError, match=rf"^{train}: empty client 1 \(no training examples\)$"):
        load_flexlora_ni(root)

    train.unlink()
    with pytest.raises(FlexLoraError, match=rf"^{root}: client 1 has no local_training_1.json$"):
        load_flexlora_ni(root)


def test_flexlora_ni_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FlexLoraError, match=rf"^data.path not found: {tmp_path}/nope$"):
        load_flexlora_ni(tmp_path / "nope")
    with pytest.raises(FlexLoraError, match=r"no local_training_<id>\.json files"):
        load_flexlora_ni(tmp_path)


# ---------------------------------------------------------------- ni-tasks


def test_ni_tasks_one_client_per_task_with_80_10_10_splits(tmp_path: Path) -> None:
    root = make_sni_folder(tmp_path, {"task10_b": 20, "task2_a": 10}, ["task2_a"], ["task10_b"])
    clients = load_ni_tasks(root)
    assert list(clients) == ["task2_a", "task10_b"]
    a = clients["task2_a"]
    assert (len(a.train), len(a.eval), len(a.test)) == (8, 1, 1)
    assert (len(clients["task10_b"].train), len(clients["task10_b"].test)) == (16, 2)
    assert a.train[0] == Example(
        "Answer the question of task2_a.\nUse one word.",
        "question 0?",
        "answer 0",
        "Question Answering",
    )
    assert a.test[0].input == "question 9?"  # positional: the last 10% is test
    split = official_split(root)
    assert split.train == ["task2_a"] and split.test == ["task10_b"]


def test_ni_tasks_bad_inputs(tmp_path: Path) -> None:
    root = make_sni_folder(tmp_path, {"task1_a": 3})
    task = root / "tasks" / "task1_a.json"

    bad = sni_task(3)
    del bad["Definition"]
    task.write_text(json.dumps(bad))
    with pytest.raises(FlexLoraError, match=rf"^{task}: missing required field 'Definition'$"):
        load_ni_tasks(root)

    bad = sni_task(3)
    bad["Instances"][1]["output"] = []
    task.write_text(json.dumps(bad))
    with pytest.raises(FlexLoraError, match=rf"^{task} Instances\[1\]: output is an empty list$"):
        load_ni_tasks(root)

    bad = sni_task(0)
    task.write_text(json.dumps(bad))
    with pytest.raises(FlexLoraError, match=rf"^{task}: empty client task1_a \(no Instances\)$"):
        load_ni_tasks(root)

    with pytest.raises(FlexLoraError, match=r"no tasks/\*\.json task files"):
        load_ni_tasks(tmp_path / "splits")


# ---------------------------------------------------------------- jsonl / json / dolly / hf


def test_jsonl_and_json_list_with_field_map_and_defaults(tmp_path: Path) -> None:
    rows = [{"q": "Q1", "a": "A1", "topic": "t1"}, {"q": "Q2", "a": "A2", "ctx": None}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    as_list = tmp_path / "d.json"
    as_list.write_text(json.dumps(rows))
    field_map = {"instruction": "q", "output": "a", "category": "topic", "input": "ctx"}
    for path in (jsonl, as_list):
        pool = load_file_pool(path, field_map)
        assert pool.examples == [Example("Q1", "", "A1", "t1"), Example("Q2", "", "A2", "default")]
        assert pool.labels is None


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    text = "first\u2028second\u2029third"
    path.write_text(json.dumps({"instruction": text, "output": "o"}, ensure_ascii=False) + "\n")
    assert load_file_pool(path, {}).examples == [Example(text, "", "o", "default")]


def test_jsonl_bad_inputs_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n')
    with pytest.raises(
        FlexLoraError, match=rf"^{path} line 3: broken JSON at column 32: Expecting value$"
    ):
        load_file_pool(path, {})
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(FlexLoraError, match=rf"^{path} line 2: missing required field 'output'$"):
        load_file_pool(path, {})
    path.write_text('{"instruction": "a", "response": "b"}\n[1]\n')
    with pytest.raises(FlexLoraError, match=rf"^{path} line 2: expected a JSON object, got list$"):
        load_file_pool(path, {"output": "response"})
    with pytest.raises(FlexLoraError, match=r"^data.field_map: unknown field 'answer'"):
        load_file_pool(path, {"answer": "response"})
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps([{"q": "a", "output": "b"}, {"output": "b"}]))
    with pytest.raises(
        FlexLoraError, match=rf"^{listed} record 1: missing required field 'q' \(our instruction\)$"
    ):
        load_file_pool(listed, {"instruction": "q"})
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(FlexLoraError, match=rf"^{empty}: no records$"):
        load_file_pool(empty, {})


def test_label_field_must_exist_and_the_first_record_lacking_it_is_named(tmp_path: Path) -> None:
    rows = dolly_records(5)
    rows[3].pop("category")
    path = write_jsonl(tmp_path / "dolly.jsonl", rows)
    with pytest.raises(
        FlexLoraError,
        match=rf"^data.label_field 'category' \(source field 'category'\) is missing "
        rf"from {path} line 4, "
        "the first record lacking it$",
    ):
        load_dolly_pool(path, {}, label_field="category")
    with pytest.raises(
        FlexLoraError, match=r"data.label_field 'topic' .* line 1, the first record"
    ):
        load_dolly_pool(path, {}, label_field="topic")


def test_dolly_maps_context_and_response_and_accepts_its_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", dolly_records(4))
    pool = load_dolly_pool(tmp_path, {}, label_field="category")
    assert pool.examples[0] == Example("Question number 0?", "Context 0.", "Response 0.", "open_qa")
    assert pool.examples[1].input == ""
    assert pool.labels == ["open_qa", "brainstorming", "summarization", "open_qa"]


def test_hf_path_runs_the_records_code_on_a_local_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    local = datasets.Dataset.from_list(
        [
            {"prompt": "P1", "completion": "C1", "kind": "k"},
            {"prompt": "P2", "completion": "C2", "kind": "j"},
        ]
    )
    field_map = {"instruction": "prompt", "output": "completion", "category": "kind"}
    pool = pool_from_dataset(local, field_map, "hf:local")
    assert pool.examples == [Example("P1", "", "C1", "k"), Example("P2", "", "C2", "j")]

    calls: list[tuple[str, str]] = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pool = load_hf_pool("someone/data", "train", field_map, label_field="category")
    assert (
        calls == [("someone/data", "train")]
        and pool.labels == ["k", "j"]
        and pool.origin == "hf:someone/data[train]"
    )

    def offline(name: str, split: str) -> datasets.Dataset:
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        FlexLoraError,
        match=r"^cannot load Hugging Face dataset 'someone/data' split 'train': "
        r"ConnectionError: no network$",
    ):
        load_hf_pool("someone/data", "train", field_map)
