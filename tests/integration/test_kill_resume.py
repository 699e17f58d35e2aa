"""A `flexlora run` subprocess killed with SIGKILL at several points, then resumed with
`flexlora run --resume DIR`, ends identical to an uninterrupted run: the same
metrics.jsonl records and summary.json (timings aside), every adapter tensor bit for
bit, and every plot written.

The kill lands at a point by polling the run folder for the file that marks it (no hook
in flexlora): config.yaml (before the first checkpoint), the round-1 checkpoint (mid
round 2), round 1's metrics line (before its checkpoint), adapters/ (while writing the
adapters), summary.json (while plotting). Each case checks the folder is in the state
it names before resuming, so a kill that landed elsewhere fails instead of passing
vacuously. Only the first case runs by default; the rest are marked slow (a run whose
plots are missing is also finished by --resume in a default test, without a kill).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine_fixtures import make_tiny_model, quick_overrides, set_args, without_timings
from flexlora.cli import main as cli_main
from flexlora.outputs import CHECKPOINT, METRICS, RUN_PLOTS

REPO = Path(__file__).resolve().parents[2]
KILL_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kill")


def run_sets(model: Path, cache: Path) -> list[str]:
    """3 rounds of a few seconds (the engine tests' quick run)."""
    return set_args(quick_overrides(model, cache))


def flexlora(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "flexlora.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=KILL_TIMEOUT)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def straight(tiny_model: Path, workdir: Path) -> Path:
    """The uninterrupted run every killed one must end equal to."""
    out = workdir / "straight"
    finish(flexlora("run", "--quiet", "--out", str(out), *run_sets(tiny_model, workdir / "cache")))
    return out


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every half millisecond)."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point: {err}")
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def metrics_lines(out: Path) -> int:
    try:
        return (out / METRICS).read_text().count("\n")
    except FileNotFoundError:
        return 0


def newer(a: Path, b: Path) -> bool:
    """`a` was written after `b` (both exist)."""
    try:
        return a.stat().st_mtime_ns > b.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    assert without_timings(read_jsonl(a / METRICS)) == without_timings(read_jsonl(b / METRICS))
    assert [r["round"] for r in read_jsonl(b / METRICS)] == [1, 2, 3]
    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    assert without_timings(summary_a) == without_timings(summary_b)
    adapters = sorted(p.name for p in (a / "adapters").iterdir())
    assert adapters == sorted(p.name for p in (b / "adapters").iterdir())
    assert {"global", "rank-2", "rank-4", "rank-8"} <= set(adapters)
    for name in adapters:
        tensors_a = load_file(a / "adapters" / name / "adapter_model.safetensors")
        tensors_b = load_file(b / "adapters" / name / "adapter_model.safetensors")
        assert tensors_a.keys() == tensors_b.keys()
        for key in tensors_a:
            assert tensors_a[key].dtype == tensors_b[key].dtype
            assert torch.equal(tensors_a[key], tensors_b[key]), (name, key)
        config_a = (a / "adapters" / name / "adapter_config.json").read_text()
        assert config_a == (b / "adapters" / name / "adapter_config.json").read_text()
    for plot in RUN_PLOTS:
        assert (b / "plots" / plot).stat().st_size > 1000
    # nothing a killed writer left behind survives the resume
    leftovers = [p.name for p in b.rglob(".*") if p.name != ".lock"]
    assert leftovers == []


def before_checkpoint(out: Path) -> bool:
    return (out / "config.yaml").is_file()


def check_before_checkpoint(out: Path) -> None:
    # The round-0 checkpoint follows config.yaml by milliseconds: when the kill landed
    # after it, remove it, to leave what a kill a moment earlier leaves (a config, an
    # empty metrics.jsonl, no checkpoint), which is the state this case is about.
    (out / CHECKPOINT).unlink(missing_ok=True)
    assert metrics_lines(out) == 0 and not (out / "summary.json").exists()


def mid_round(out: Path) -> bool:
    return metrics_lines(out) >= 1 and newer(out / CHECKPOINT, out / METRICS)


def check_mid_round(out: Path) -> None:
    assert metrics_lines(out) == 1 and not (out / "adapters").exists()


def after_metrics_line(out: Path) -> bool:
    return metrics_lines(out) >= 1


def check_after_metrics_line(out: Path) -> None:
    # the round-1 line is there; its checkpoint may or may not be
    assert metrics_lines(out) in (1, 2) and not (out / "adapters").exists()


def writing_adapters(out: Path) -> bool:
    return (out / "adapters").exists()


def check_writing_adapters(out: Path) -> None:
    assert metrics_lines(out) == 3 and not (out / "summary.json").exists()


def plotting(out: Path) -> bool:
    return (out / "summary.json").is_file()


def check_plotting(out: Path) -> None:
    assert not all((out / "plots" / p).is_file() for p in RUN_PLOTS)


CASES = {
    "before-first-checkpoint": (before_checkpoint, check_before_checkpoint),
    "mid-round": (mid_round, check_mid_round),
    "after-metrics-line": (after_metrics_line, check_after_metrics_line),
    "writing-adapters": (writing_adapters, check_writing_adapters),
    "plotting": (plotting, check_plotting),
}


@pytest.mark.parametrize(
    "point",
    [
        "before-first-checkpoint",
        *(
            pytest.param(p, marks=pytest.mark.slow)
            for p in ("mid-round", "after-metrics-line", "writing-adapters", "plotting")
        ),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    point: str, tiny_model: Path, workdir: Path, straight: Path
) -> None:
    # Prepare
    ready, check = CASES[point]
    out = workdir / point
    args = ["run", "--quiet", "--out", str(out), *run_sets(tiny_model, workdir / "cache")]
    # Execute: kill at the point, check the folder is in that state, resume
    kill_when(flexlora(*args), lambda: ready(out))
    check(out)
    finish(flexlora("run", "--quiet", "--resume", str(out)))
    # Assert
    assert_same_run(straight, out)


def test_resume_finishes_a_run_whose_plots_are_missing(
    workdir: Path, straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a finished run but for its plots (stopped after summary.json)
    out = workdir / "no-plots"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "plots")
    (out / "summary.json").write_text("{}")  # rewritten by the resume, not trusted
    # Execute
    code = cli_main(["run", "--quiet", "--resume", str(out)])
    # Assert: finished as the uninterrupted run; once finished, nothing left to resume
    assert code == 0
    assert_same_run(straight, out)
    capsys.readouterr()
    assert cli_main(["run", "--quiet", "--resume", str(out)]) == 2
    assert "already completed its 3 rounds" in capsys.readouterr().err
