"""`flexlora compare`'s tables: mean ± std over seeds (the mean alone for one seed), the
% improvement and paired-test tables, and the best-row mark, on made-up results."""

from __future__ import annotations

import csv
import json
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
        "metric", "method", "uniform mean", "uniform std", "uniform best",
        "extreme mean", "extreme std", "extreme best",
    ]  # fmt: skip
    by_key = {(r[0], r[1]): r[2:] for r in rows[1:]}
    if seeds == 1:
        assert "| flexlora | 10.00 | 10.00 |" in text and "±" not in text
        assert "| flexlora | 2.000 | 2.000 |" in text
        assert by_key[("unseen_rougeL", "flexlora")] == ["10.0000", "", "", "10.0000", "", ""]
    else:
        # values 10, 11, 12: mean 11, sample std 1; losses 2.0, 2.1, 2.2: std 0.1
        assert "| flexlora | 11.00 ± 1.00 | 11.00 ± 1.00 |" in text
        assert "| fedit-min | 2.100 ± 0.100 | 2.100 ± 0.100 |" in text
        # equal rows: no lead at all, so no mark
        assert by_key[("unseen_loss", "fedit-min")] == [
            "2.1000", "0.1000", "false", "2.1000", "0.1000", "false"
        ]  # fmt: skip
    assert (tmp_path / "results.png").stat().st_size > 0


def made_up_grid(seeds: int) -> dict:
    """fedit-min scores Rouge-L 10, 12, 14, ... (std 2 over 3 seeds) and loss 2.0, 1.8, ...;
    flexlora beats it on every seed by 5 Rouge-L / 0.5 loss on uniform (a clear win) and by
    1 Rouge-L / 0.05 loss on extreme (within the spread); zeropad is −1, 0, +1 around it."""

    def runs(rouge: list[float], loss: list[float]) -> list[dict]:
        return [{"unseen_rougeL": r, "unseen_loss": x} for r, x in zip(rouge, loss, strict=True)]

    rouge = [10.0 + 2 * k for k in range(seeds)]
    loss = [2.0 - 0.2 * k for k in range(seeds)]
    shift = [(-1.0, 0.0, 1.0)[k % 3] for k in range(seeds)]
    cols = ("uniform", "extreme")
    return {
        "base model": {d: runs([5.0] * seeds, [3.0] * seeds) for d in cols},
        "fedit-min": {d: runs(rouge, loss) for d in cols},
        "zeropad": {
            d: runs([r + s for r, s in zip(rouge, shift, strict=True)], loss) for d in cols
        },
        "flexlora": {
            "uniform": runs([r + 5 for r in rouge], [x - 0.5 for x in loss]),
            "extreme": runs([r + 1 for r in rouge], [x - 0.05 for x in loss]),
        },
    }


def md_row(text: str, label: str, heading: str) -> str:
    """The row `label` of the results.md table under `heading`."""
    section = text.split(heading, 1)[1]
    return next(line for line in section.splitlines() if line.startswith(f"| {label} |"))


def test_improvement_and_exact_sign_flip_test_over_three_seeds(tmp_path: Path) -> None:
    write_results(tmp_path, made_up_grid(3), [0, 1, 2])
    text = (tmp_path / "results.md").read_text()
    # Rouge-L means: fedit-min 12, flexlora 17 / 13: (17 − 12) / 12 = +41.7 %, 1/12 = +8.3 %
    improvement = "### unseen_rougeL: % improvement"
    assert md_row(text, "flexlora vs fedit-min", improvement) == (
        "| flexlora vs fedit-min | +41.7% | +8.3% |"
    )
    # loss: (1.8 − 1.3) / 1.8 = +27.8 %; (1.8 − 1.75) / 1.8 = +2.8 %
    improvement = "### unseen_loss: % improvement"
    assert md_row(text, "flexlora vs fedit-min", improvement) == (
        "| flexlora vs fedit-min | +27.8% | +2.8% |"
    )
    # wins on all 3 seeds: exact two-sided sign-flip p = 2 / 2³ = 0.25; zeropad's
    # differences −1, 0, +1 sum to 0, which every sign pattern reaches: p = 1
    tests = "### unseen_rougeL: paired differences"
    assert md_row(text, "flexlora vs fedit-min", tests) == (
        "| flexlora vs fedit-min | +5.00 ± 0.00, p 0.25 | +1.00 ± 0.00, p 0.25 |"
    )
    assert md_row(text, "zeropad vs fedit-min", tests) == (
        "| zeropad vs fedit-min | +0.00 ± 1.00, p 1 | +0.00 ± 1.00, p 1 |"
    )
    assert "| base model vs" not in text  # the reference row is no contender
    assert "paired permutation test (exact sign-flip)" in text
    assert "same data suite and partition" in text  # the caption says what is paired
    # marked: flexlora's uniform lead over the runner-up (fedit-min, 12 ± 2) is 5 > 2;
    # on extreme its lead of 13 − 12 = 1 is inside the std of 2 and is not marked
    assert md_row(text, "flexlora", "## unseen_rougeL") == (
        "| flexlora | **17.00 ± 2.00** ★ | 13.00 ± 2.00 |"
    )
    assert "★ marks the best mean of a column only when its lead" in text

    rows = list(csv.DictReader((tmp_path / "results_stats.csv").open()))
    found = {(r["metric"], r["distribution"], r["method"], r["baseline"]): r for r in rows}
    assert len(found) == len(rows) == 2 * 2 * 2  # metrics × columns × (zeropad, flexlora)
    win = found[("unseen_rougeL", "uniform", "flexlora", "fedit-min")]
    assert float(win["improvement_pct"]) == pytest.approx(500 / 12, rel=1e-5)
    assert (win["seeds"], win["p_value"], win["mean_difference"]) == ("3", "0.25", "5")
    assert win["test"] == "paired permutation test (exact sign-flip)"
    best = {(r[0], r[1]): r for r in csv.reader((tmp_path / "results.csv").open())}
    assert best[("unseen_rougeL", "flexlora")][4::3] == ["true", "false"]
    assert best[("unseen_rougeL", "base model")][4::3] == ["", ""]

    record = json.loads((tmp_path / "results.json").read_text())
    assert record["seeds"] == [0, 1, 2] and record["runs"]["flexlora"]["uniform"][0] == {
        "unseen_rougeL": 15.0,
        "unseen_loss": 1.5,
    }
    stats = record["statistics"]["unseen_rougeL"]
    assert stats["best"] == {"uniform": "flexlora", "extreme": None}
    assert stats["test"] == "paired permutation test (exact sign-flip)"
    assert [c["p_value"] for c in stats["comparisons"]["uniform"]] == [1.0, 0.25]


def test_five_winning_seeds_give_p_one_in_sixteen(tmp_path: Path) -> None:
    write_results(tmp_path, made_up_grid(5), list(range(5)))
    text = (tmp_path / "results.md").read_text()
    # 2 of the 2⁵ = 32 sign patterns reach |Σ d|: p = 0.0625
    assert md_row(text, "flexlora vs fedit-min", "### unseen_loss: paired differences") == (
        "| flexlora vs fedit-min | -0.500 ± 0.000, p 0.0625 | -0.050 ± 0.000, p 0.0625 |"
    )


def test_one_seed_has_an_improvement_but_no_test_and_no_mark(tmp_path: Path) -> None:
    write_results(tmp_path, made_up_grid(1), [7])
    text = (tmp_path / "results.md").read_text()
    assert md_row(text, "flexlora vs fedit-min", "### unseen_rougeL: % improvement") == (
        "| flexlora vs fedit-min | +50.0% | +10.0% |"  # (15 − 10) / 10, (11 − 10) / 10
    )
    assert md_row(text, "flexlora vs fedit-min", "### unseen_rougeL: paired differences") == (
        "| flexlora vs fedit-min | +5.00, p n/a (1 seed) | +1.00, p n/a (1 seed) |"
    )
    assert text.count("★") == text.count("★ marks") == 2  # the rule is stated, no mark
    rows = list(csv.DictReader((tmp_path / "results_stats.csv").open()))
    assert {(r["std_difference"], r["p_value"], r["test"]) for r in rows} == {("", "", "")}
    record = json.loads((tmp_path / "results.json").read_text())
    flex = record["statistics"]["unseen_rougeL"]["comparisons"]["uniform"][1]
    assert (flex["method"], flex["pairs"], flex["p_value"]) == ("flexlora", 1, None)


def test_console_tables_mark_the_clear_win_and_name_the_test() -> None:
    from rich.console import Console

    from flexlora.commands.compare import results_table, statistics_tables

    grid = made_up_grid(3)
    console = Console(record=True, width=200)
    console.print(results_table(grid, "unseen_rougeL", 3))
    for table in statistics_tables(grid, "unseen_rougeL", 3):
        console.print(table)
    text = " ".join(console.export_text().split())  # captions wrap to the table's width
    assert "17.00 ± 2.00 ★" in text and "13.00 ± 2.00 ★" not in text
    assert "+41.7%" in text and "+5.00 ± 0.00, p 0.25" in text
    assert "paired permutation test (exact sign-flip)" in text


def test_a_cell_scores_once_after_its_last_round_and_fedit_rows_take_one_type() -> None:
    from flexlora.commands.compare import cell_config
    from flexlora.config import load_config

    base = load_config(None, ["federation.rounds=7", "eval.every=1", "eval.seen=true"])
    cell = cell_config(base, "flexlora", "heavy-tail-light", seed=3)
    assert (cell.eval.every, cell.eval.seen, cell.eval.baseline) == (7, False, True)
    assert (cell.method, cell.seed, cell.ranks.distribution) == ("flexlora", 3, "heavy-tail-light")
    assert cell.ranks.types == base.ranks.types
    fedit = cell_config(base, "fedit-max", "heavy-tail-light", seed=0)
    assert fedit.method == "fedit" and fedit.ranks.types == [16]
    assert fedit.ranks.distribution == "uniform" and fedit.eval.every == 7


def test_rows_are_paired_with_their_smallest_rank_baseline() -> None:
    from flexlora.commands.compare import paired_baseline

    assert paired_baseline("flexlora") == "fedit-min"
    assert paired_baseline("slora+flexlora") == "slora-min"
    assert paired_baseline("fedit-max") == "fedit-min"  # the bucket effect
    assert paired_baseline("fedavg-max") == "fedavg-min"
    assert paired_baseline("fedit-min") is None and paired_baseline("zeropad") is None


def test_a_cell_checkpointed_before_a_key_was_added_resumes_as_the_same_config() -> None:
    from flexlora.commands.compare import same_config
    from flexlora.config import config_to_dict, load_config

    cfg = load_config(None, [])
    older = config_to_dict(cfg)
    del older["federation"]["sgd_lr"]  # written by a flexlora without the key
    assert same_config(older, cfg)
    changed = config_to_dict(cfg)
    changed["federation"]["lr"] = 1e-2
    assert not same_config(changed, cfg)
    assert not same_config({"federation": {"no_such_key": 1}}, cfg)
