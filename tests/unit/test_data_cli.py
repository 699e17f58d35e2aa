"""`flexlora data inspect` on a generated NI folder: numbers right, bad input one line + exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fixtures package
from fixtures.data_fixtures import make_ni_folder
from flexlora.cli import main


@pytest.fixture
def ni_dir(tmp_path: Path) -> Path:
    sizes = {str(i): (4 + i, 2, 1) for i in range(25)}
    return make_ni_folder(tmp_path / "ni", sizes, {str(i): f"Cat{i % 22:02d}" for i in range(25)})


def test_inspect_json_reports_clients_sizes_categories_and_held_out(
    ni_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["data", "inspect", "--set", "data.kind=flexlora-ni", "--set", f"data.path={ni_dir}",
         "--set", 'data.unseen.ids=["3", "24"]', "--json"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clients"] == {"seen": 23, "unseen": 2}
    assert summary["unseen_ids"] == ["3", "24"]
    # seen clients: 4 + i training examples for i in 0..24 except 3 and 24
    assert summary["examples_per_client"]["seen"]["train"] == {
        "min": 4,
        "median": 16,
        "max": 27,
        "total": 365,
    }
    assert summary["examples_per_client"]["seen"]["eval"] == {
        "min": 2,
        "median": 2,
        "max": 2,
        "total": 46,
    }
    # 22 categories: Cat00..Cat02 hold two clients each, Cat03..Cat21 one (7 + i examples);
    # the top 20, then one "other" row for the two smallest (Cat03, Cat04)
    assert summary["num_categories"] == 22 and len(summary["categories"]) == 21
    assert summary["categories"][0] == {
        "category": "Cat02",
        "examples": 4 + 2 + 4 + 24 + 3 + 3,
        "clients": 2,
    }
    assert summary["categories"][-1] == {
        "category": "other (2 categories)",
        "examples": 10 + 11,
        "clients": 2,
    }
    assert summary["seed"] == 0 and summary["skipped"] == {}


def test_inspect_tables(ni_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ni_dir.parent / "exp.yaml"
    config.write_text(
        f"seed: 1\ndata:\n  kind: flexlora-ni\n  path: {ni_dir}\n  unseen:\n    count: 22\n"
    )
    assert main(["data", "inspect", str(config)]) == 0
    out = capsys.readouterr().out
    assert "clients: 3 seen, 22 unseen (held out)" in out
    assert "… and 2 more" in out and "(seed 1)" in out and "categories (22)" in out


def test_inspect_bad_path_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["data", "inspect", "--set", "data.kind=dolly", "--set", f"data.path={tmp_path}/nope.jsonl"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"flexlora data: error: data.path not found: {tmp_path}/nope.jsonl\n"


def test_inspect_broken_record_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    assert main(["data", "inspect", "--set", "data.kind=jsonl", "--set", f"data.path={path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"flexlora data: error: {path} line 2: missing required field 'output'"
