"""benchmarks/gpu.py must not rot while no GPU runs it: its dry run, tiny shapes on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_its_two_rounds_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    rounds = report["two_rounds"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["seconds"] > 0 and 0 < r["aggregate_share"] < 1
        assert r["tokens_per_second_per_client"] > 0
    assert report["two_rounds"]["final"]["unseen_loss"] > 0
    # OUT holds the report alone: a lent machine sends back only small files
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.json"]


def _gpu_script() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return gpu


def test_a_failing_part_is_recorded_and_the_script_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = _gpu_script()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu, "build_model", broken)
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--dry-run", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="failed: two_rounds"):
        gpu.main()
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["two_rounds"]["error"] == "RuntimeError: CUDA out of memory"
    assert any("broken" in line for line in report["two_rounds"]["traceback"])


def test_the_gpu_tests_are_found_by_their_marker() -> None:
    gpu = _gpu_script()
    files = gpu.gpu_test_files()
    assert "tests/integration/test_aggregate_cli.py" in files
    assert all("flower" not in name for name in files)
