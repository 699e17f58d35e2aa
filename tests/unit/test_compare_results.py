"""`flexlora compare`'s tables: mean ± std over seeds, the mean alone for one seed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flexlora.commands.compare import write_results


def fake_results(seeds: int) -> dict:
    """Two methods × two distributions; run k of a cell scores 10 + k Rouge-L, 2 + k/10 loss."""
    runs = [{"unseen_rougeL": 10.0 + k, "unseen_loss": 2.0 + k / 10} for k in range(seeds)]
    return {m: {d: list(runs) for d in ("uniform", "extreme")} for m in ("fedit-min", "flexlora")}


@pytest.mark.parametrize("seeds", [1, 3])
def test_results_show_a_spread_only_over_several_seeds(seeds: int, tmp_path: Path) -> None:
    write_results(tmp_path, fake_results(seeds), list(range(seeds)))
    text = (tmp_path / "results.md").read_text()
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows[0] == [
        "metric", "method", "uniform mean", "uniform std", "extreme mean", "extreme std"
    ]  # fmt: skip
    by_key = {(r[0], r[1]): r[2:] for r in rows[1:]}
    if seeds == 1:
        assert "| flexlora | 10.00 | 10.00 |" in text and "±" not in text
        assert "| flexlora | 2.000 | 2.000 |" in text
        assert by_key[("unseen_rougeL", "flexlora")] == ["10.0000", "", "10.0000", ""]
    else:
        # values 10, 11, 12: mean 11, sample std 1; losses 2.0, 2.1, 2.2: std 0.1
        assert "| flexlora | 11.00 ± 1.00 | 11.00 ± 1.00 |" in text
        assert "| fedit-min | 2.100 ± 0.100 | 2.100 ± 0.100 |" in text
        assert by_key[("unseen_loss", "fedit-min")] == ["2.1000", "0.1000", "2.1000", "0.1000"]
    assert (tmp_path / "results.png").stat().st_size > 0
