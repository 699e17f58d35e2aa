"""The CLI keeps a run folder sound: one writer at a time, leftovers of killed writers
removed on the next start, absolute paths in the saved config, damaged folders refused
with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine_fixtures import make_tiny_model
from flexlora.cli import main
from flexlora.runlock import LOCK_NAME, run_lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def quick(model: Path, cache: Path | str) -> list[str]:
    sets = [
        f"model.path={model}",
        f"data.cache_dir={cache}",
        "data.synthetic={suite: families, num_clients: 12, train_per_client: 8, "
        "eval_per_client: 2, test_per_client: 2}",
        "data.max_length=128",
        "federation.rounds=1",
        "federation.clients_per_round=2",
        "federation.local_steps=1",
        "federation.batch_size=2",
        "ranks.types=[2, 4]",
        "eval.max_new_tokens=2",
        "eval.max_examples_per_client=1",
        "eval.seen=false",
    ]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--quiet", "--out", "{dir}"],
        ["run", "--quiet", "--resume", "{dir}"],
        ["compare", "--quiet", "--out", "{dir}"],
        ["compare", "--quiet", "--resume", "{dir}"],
    ],
)
def test_a_second_writer_is_refused_naming_the_holder(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "busy"
    with run_lock(folder):
        (folder / "config.yaml").write_text("seed: 0\n")  # the holder's run, under way
        args = [a.format(dir=folder) for a in command]
        assert main(args) == 2
        line = one_line(capsys)
        assert f"pid {os.getpid()}" in line and str(folder) in line
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME, "config.yaml"]


def test_run_takes_over_a_stale_lock_cleans_temps_and_saves_absolute_paths(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Prepare: a folder a killed run left: its lock and its temp files, nothing else
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    dead = dead_pid()
    (out / LOCK_NAME).write_text(f"{dead}\n")
    (out / f".checkpoint.pt.tmp-{dead}-0123456789ab").write_bytes(b"x" * 100)
    (out / ".config.yaml.k3j_a9x2").write_text("half")  # from flexlora before pids
    model = os.path.relpath(tiny_model, tmp_path)
    # Execute: relative model and cache paths, as a user in this directory would give them
    args = ["run", "--quiet", "--out", "run", *quick(Path(model), "cache")]
    assert main(args) == 0, capsys.readouterr().err
    # Assert
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no lock, no temps
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["path"] == str(tiny_model)
    assert saved["data"]["cache_dir"] == str(tmp_path / "cache")

    # --resume from elsewhere finds the same files; temps of a killed resume are removed
    monkeypatch.chdir(tmp_path.parent)
    (out / "summary.json").unlink()  # killed after the last round, before the results
    (out / f".summary.json.tmp-{dead}-0123456789ab").write_text("{")
    (out / "adapters" / f".global.tmp-{dead}-0123456789ab").mkdir()
    assert main(["run", "--quiet", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 1
    left = [p.name for p in out.rglob(".*")]
    assert left == [], left

    # metrics.jsonl lost: one line, nothing changed
    capsys.readouterr()
    (out / "summary.json").unlink()
    (out / "metrics.jsonl").unlink()
    before = sorted(str(p) for p in out.rglob("*"))
    assert main(["run", "--quiet", "--resume", str(out)]) == 2
    assert "metrics.jsonl is missing" in one_line(capsys)
    assert sorted(str(p) for p in out.rglob("*")) == before

    # aggregate: the temp folder a killed aggregate left beside OUT goes, a live one stays
    agg = tmp_path / "agg"
    (tmp_path / f".agg.tmp-{dead}-0123456789ab").mkdir()
    live = tmp_path / f".agg.tmp-{os.getpid()}-0123456789ab"
    live.mkdir()
    rank2, rank4 = out / "adapters" / "rank-2", out / "adapters" / "rank-4"
    assert main(["aggregate", str(rank2), str(rank4), "--out", str(agg)]) == 0
    assert sorted(p.name for p in tmp_path.glob(".agg.*")) == [live.name]


def test_missing_local_model_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["run", "--quiet", "--out", str(out), "--set", f"model.path={tmp_path / 'nope'}"]
    assert main(args) == 2
    assert f"model folder not found: {tmp_path / 'nope'}" in one_line(capsys)
    assert not out.exists()
