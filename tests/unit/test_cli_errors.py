"""How the CLI reports errors: a user error is one line (exit 2), --debug adds its
traceback; an engine bug (InternalError) is never shown as a user mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexlora.cli import main
from flexlora.errors import FlexLoraError, InternalError


def test_user_error_is_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), "--set", "seed=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flexlora run: error: seed must be >= 0, got -1"]


def test_debug_shows_the_traceback_of_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--debug", "run", "--quiet", "--out", str(tmp_path / "o"), "--set", "seed=-1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "__post_init__" in err
    assert err.strip().splitlines()[-1] == "flexlora run: error: seed must be >= 0, got -1"


def test_internal_error_is_a_bug_report_with_traceback_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise InternalError("server state has 3 classes, the federation 2")

    monkeypatch.setattr("flexlora.commands.run.load_config", broken)
    assert main(["run", "--quiet", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "flexlora bug" in err and "server state has 3 classes" in err


def test_internal_error_is_not_a_user_error() -> None:
    assert not issubclass(InternalError, FlexLoraError)
    assert not issubclass(InternalError, ValueError)  # a caller's `except ValueError` skips it
