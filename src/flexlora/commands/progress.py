"""Rich progress bars for the engine's RunObserver hooks (rounds, clients, evaluation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flexlora.simulation import RunObserver


class RichObserver(RunObserver):
    """Bars for rounds, the clients of the current round, and evaluation, each with ETA."""

    def __init__(
        self, console: Console, total_rounds: int, label: str = "rounds", done_rounds: int = 0
    ) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.rounds = self.progress.add_task(label, total=total_rounds, completed=done_rounds)
        self.clients: TaskID | None = None
        self.evaluation: TaskID | None = None

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def round_started(self, round_index: int, clients: list[str]) -> None:
        if self.clients is not None:
            self.progress.remove_task(self.clients)
        self.clients = self.progress.add_task(f"round {round_index} clients", total=len(clients))

    def client_done(self, client_id: str) -> None:
        if self.clients is not None:
            self.progress.advance(self.clients)

    def eval_started(self, name: str, total_examples: int) -> None:
        if self.evaluation is not None:
            self.progress.remove_task(self.evaluation)
        self.evaluation = self.progress.add_task(f"eval {name.split(':')[0]}", total=total_examples)

    def eval_progress(self, done: int) -> None:
        if self.evaluation is not None:
            self.progress.update(self.evaluation, completed=done)

    def round_done(self, record: Mapping[str, Any]) -> None:
        self.progress.advance(self.rounds)
