"""What keeps a run folder sound: one writer at a time (runlock), atomic writes whose
leftovers are cleaned on the next start, and no non-finite number written as null."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexlora.atomic import atomic_folder, atomic_write_text, remove_stale_temps, temp_path
from flexlora.config import ExperimentConfig
from flexlora.errors import FlexLoraError
from flexlora.outputs import RunWriter, read_checkpoint, to_json
from flexlora.runlock import LOCK_NAME, run_lock


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- one writer per folder ---------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
        message = f"in use by another flexlora run \\(pid {os.getpid()}\\)"
        with pytest.raises(FlexLoraError, match=message), run_lock(tmp_path / "run"):
            pass
    with run_lock(tmp_path / "run"):  # released on the way out: free again
        pass


def test_lock_held_by_another_process_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    code = (
        "import sys, time; from pathlib import Path; from flexlora.runlock import run_lock\n"
        f"with run_lock(Path({str(folder)!r})):\n"
        "    print('locked', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FlexLoraError, match=f"pid {holder.pid}"), run_lock(folder):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with run_lock(folder):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(f"{dead_pid()}\n")
    with run_lock(folder):
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists()


def test_lock_removes_the_folder_it_made_when_nothing_was_written(tmp_path: Path) -> None:
    with run_lock(tmp_path / "a"):
        pass
    assert not (tmp_path / "a").exists()
    with run_lock(tmp_path / "b"):
        (tmp_path / "b" / "config.yaml").write_text("x")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.yaml"]
    with (
        pytest.raises(FlexLoraError, match="is not a directory"),
        run_lock(tmp_path / "missing", create=False),
    ):
        pass


# --- temp files of killed writers ----------------------------------------------------


def test_stale_temps_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = [
        f".checkpoint.pt.tmp-{dead}-0123456789ab",
        ".checkpoint.pt.k3j_a9x2",  # tempfile.mkstemp, before temps carried a pid
        ".metrics.png.tmp.png",
        f"adapters/.global.tmp-{dead}-0123456789ab/",
        "adapters/.rank-2.tmp-0123456789ab/",
    ]
    kept = [
        f".config.yaml.tmp-{os.getpid()}-0123456789ab",  # a writer still running
        ".hidden",
        "checkpoint.pt",
        "notes.tmp",
    ]
    for name in stale + kept:
        path = tmp_path / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"x")
        else:
            path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == len(stale)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(kept)


def test_only_the_named_targets_temps_go(tmp_path: Path) -> None:
    dead = dead_pid()
    (tmp_path / f".out.tmp-{dead}-0123456789ab").mkdir()
    (tmp_path / f".other.tmp-{dead}-0123456789ab").mkdir()
    assert remove_stale_temps(tmp_path, recursive=False, target="out") == 1
    assert [p.name for p in tmp_path.iterdir()] == [f".other.tmp-{dead}-0123456789ab"]


def test_atomic_writers_use_the_one_temp_rule(tmp_path: Path) -> None:
    name = temp_path(tmp_path / "summary.json").name
    assert name.startswith(f".summary.json.tmp-{os.getpid()}-")
    atomic_write_text(tmp_path / "a.txt", "caf\u00e9")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "caf\u00e9"
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "f") as tmp:
        assert tmp.name.startswith(f".f.tmp-{os.getpid()}-")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# --- non-finite numbers --------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_is_an_error_naming_round_and_key(bad: float) -> None:
    record = {"round": 3, "train_loss": 1.0, "eval": {"unseen": {"loss": bad}}}
    with pytest.raises(FlexLoraError) as e:
        to_json(record)
    message = str(e.value)
    assert message.startswith(f"round 3: eval.unseen.loss is {bad}")
    assert "federation.lr" in message


def test_non_finite_in_a_list_names_its_index() -> None:
    with pytest.raises(FlexLoraError, match=r"history\[1\]\.train_loss is nan"):
        to_json({"history": [{"train_loss": 1.0}, {"train_loss": math.nan}]})


def test_finite_values_and_tensors_serialise() -> None:
    import torch

    assert json.loads(to_json({"a": [1.5, None, torch.tensor([1.0, 2.0])]})) == {
        "a": [1.5, None, [1.0, 2.0]]
    }
    with pytest.raises(FlexLoraError, match=r"a\[2\]\[1\] is nan"):
        to_json({"a": [1.5, None, torch.tensor([1.0, math.nan])]})


def test_a_non_finite_round_record_is_never_appended(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, ExperimentConfig())
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(FlexLoraError, match="round 2: train_loss is nan"):
        writer.append_round({"round": 2, "train_loss": math.nan})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 1}\n'


# --- resume of a damaged folder -------------------------------------------------------


def test_resume_without_metrics_jsonl_is_one_line(tmp_path: Path) -> None:
    import torch

    from flexlora.config import config_to_dict
    from flexlora.outputs import CHECKPOINT, CHECKPOINT_FORMAT

    state = {"round": 2, "history": "[]", "baseline": "null"}
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": config_to_dict(ExperimentConfig()),
         "state": state, "seconds": 1.0},
        tmp_path / CHECKPOINT,
    )  # fmt: skip
    with pytest.raises(FlexLoraError) as e:
        read_checkpoint(tmp_path)
    assert "metrics.jsonl" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')  # one line for two rounds
    with pytest.raises(FlexLoraError, match=r"metrics\.jsonl has 1 round"):
        read_checkpoint(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    assert read_checkpoint(tmp_path).rounds_completed == 2
