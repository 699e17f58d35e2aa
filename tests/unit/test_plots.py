"""plots: the per-round figures put their ticks on whole rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flexlora import plots


def test_round_axes_have_integer_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[Any] = []

    def keep(fig: Any, path: Path) -> None:
        fig.canvas.draw()  # ticks are placed when the figure is drawn
        figures.append(fig)

    monkeypatch.setattr(plots, "_save", keep)
    # three rounds: matplotlib's default locator would tick 0.5, 1.0, 1.5, ... here
    history = [
        {
            "round": r,
            "train_loss": 3.0 - r / 10,
            "eval": {"unseen": {"loss": 2.0 - r / 10, "rougeL": 10.0 + r}},
            "aggregation": {"discarded_energy": {"q": {"r4": 0.1 * r}}},
        }
        for r in (1, 2, 3)
    ]
    baseline = {"unseen": {"loss": 2.5, "rougeL": 9.0}}
    plots.plot_run(tmp_path, history, [{"key": "r4", "clients": 2}], baseline)
    metrics, _, energy = figures
    round_axes = [*metrics.axes, *energy.axes]
    assert len(round_axes) == 3
    for ax in round_axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(shown) >= 2 and all(float(t).is_integer() for t in shown), shown
