"""comparison_stats: % improvement, the exact sign-flip test, pairing, the best-row mark.

Every expected figure is worked out by hand in the test (no reference library).
"""

from __future__ import annotations

import itertools

import pytest

from flexlora.comparison_stats import (
    MAX_EXACT_PAIRS,
    TEST_NAME,
    comparison_pairs,
    improvement_percent,
    marked_best,
    paired_comparison,
    paired_test_name,
    sign_flip_p_value,
)


def test_improvement_is_oriented_so_that_positive_is_better() -> None:
    # Rouge-L 22 over 20: (22 − 20) / 20 · 100 = +10 %
    assert improvement_percent(22.0, 20.0, higher_is_better=True) == pytest.approx(10.0)
    # loss 1.8 under 2.0: (2.0 − 1.8) / 2.0 · 100 = +10 %; a higher loss is negative
    assert improvement_percent(1.8, 2.0, higher_is_better=False) == pytest.approx(10.0)
    assert improvement_percent(2.5, 2.0, higher_is_better=False) == pytest.approx(-25.0)
    # |baseline| keeps the sign meaningful for a negative baseline: −4 over −5 is +20 %
    assert improvement_percent(-4.0, -5.0, higher_is_better=True) == pytest.approx(20.0)
    assert improvement_percent(1.0, 0.0, higher_is_better=True) is None


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([1.5, 1.5, 1.5], 2 / 8),  # one sign: only all-plus and all-minus reach |Σ| = 4.5
        ([0.2, 0.7, 1.1, 0.4, 2.0], 2 / 32),
        ([-0.2, -0.7, -1.1, -0.4, -2.0], 2 / 32),  # two-sided: losing every seed counts too
        # Σ = 1 + 2 + 3 − 0.5 = 5.5; |Σ s·d| ≥ 5.5 for (+,+,+,±) and (−,−,−,±): 4 of 16
        ([1.0, 2.0, 3.0, -0.5], 4 / 16),
        ([1.0, -1.0], 1.0),  # Σ = 0: every pattern is as extreme
        ([0.0, 0.0, 0.0], 1.0),
    ],
)
def test_exact_sign_flip_p_values(differences: list[float], expected: float) -> None:
    assert sign_flip_p_value(differences) == pytest.approx(expected)


def test_sign_flip_counts_every_pattern_as_brute_force_does() -> None:
    d = [0.3, -1.2, 2.5, 0.9, -0.1, 1.7]
    observed = abs(sum(d))
    patterns = list(itertools.product((-1, 1), repeat=len(d)))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-12
               for signs in patterns)  # fmt: skip
    assert sign_flip_p_value(d) == pytest.approx(hits / len(patterns))


def test_many_pairs_are_sampled_and_named_so() -> None:
    n = MAX_EXACT_PAIRS + 5
    # all positive: the exact p would be 2 / 2ⁿ; the sampled estimate is (1 + hits) / (1 + B)
    p = sign_flip_p_value([1.0] * n)
    assert 0 < p < 1e-4
    assert paired_test_name(3) == TEST_NAME == "paired permutation test (exact sign-flip)"
    assert "random" in paired_test_name(n)


def test_paired_comparison_pairs_by_seed_and_skips_missing_values() -> None:
    # seed 1 of the baseline has no value: only seeds 0 and 2 are compared
    c = paired_comparison(
        "flexlora", "fedit-min", [12.0, 30.0, 15.0], [10.0, None, 12.0], higher_is_better=True
    )
    assert c is not None
    assert (c.pairs, c.method_mean, c.baseline_mean) == (2, 13.5, 11.0)
    assert c.mean_difference == pytest.approx(2.5)  # differences 2 and 3
    assert c.std_difference == pytest.approx(0.5**0.5)  # sample std of (2, 3)
    assert c.improvement_pct == pytest.approx(2.5 / 11 * 100)
    assert c.p_value == pytest.approx(2 / 4)


def test_one_seed_has_no_spread_and_no_p_value() -> None:
    c = paired_comparison("flexlora", "fedit-min", [2.0], [2.5], higher_is_better=False)
    assert c is not None
    assert (c.pairs, c.std_difference, c.p_value) == (1, None, None)
    assert c.improvement_pct == pytest.approx(20.0)  # loss 2.0 under 2.5
    assert paired_comparison("a", "b", [None], [1.0], higher_is_better=True) is None
    with pytest.raises(ValueError, match="paired by seed"):
        paired_comparison("a", "b", [1.0, 2.0], [1.0], higher_is_better=True)


def test_pairs_come_from_the_mapping_and_the_reference() -> None:
    rows = ["fedit-min", "fedit-max", "fedavg-min", "zeropad", "flexlora", "fedavg+flexlora"]
    pairs = {"flexlora": "fedit-min", "fedavg+flexlora": "fedavg-min"}
    homogeneous = {"fedit-min", "fedit-max", "fedavg-min"}
    assert comparison_pairs(rows, pairs, "fedit-min", homogeneous) == [
        ("zeropad", "fedit-min"),
        ("flexlora", "fedit-min"),  # its own baseline is the reference: tested once
        ("fedavg+flexlora", "fedavg-min"),
        ("fedavg+flexlora", "fedit-min"),
    ]
    # a baseline missing from the grid: nothing to pair with
    assert comparison_pairs(["flexlora"], pairs, "fedit-min", homogeneous) == []


def test_best_is_marked_only_beyond_the_spread() -> None:
    clear = {"fedit-min": (11.0, 1.0), "zeropad": (11.5, 0.5), "flexlora": (14.0, 1.2)}
    assert marked_best(clear, higher_is_better=True, seeds=3) == "flexlora"  # 2.5 > 1.2
    within = {"fedit-min": (11.0, 1.0), "flexlora": (11.8, 1.0)}
    assert marked_best(within, higher_is_better=True, seeds=3) is None  # 0.8 < 1.0
    # lower is better for a loss; a margin equal to the spread is not a clear lead
    losses = {"fedit-min": (8.9, 0.1), "flexlora": (8.8, 0.1), "zeropad": (9.5, 0.0)}
    assert marked_best(losses, higher_is_better=False, seeds=3) is None
    losses["flexlora"] = (8.5, 0.1)
    assert marked_best(losses, higher_is_better=False, seeds=3) == "flexlora"
    assert marked_best(clear, higher_is_better=True, seeds=1) is None  # no spread known
    assert marked_best({"a": (float("nan"), 0.0), "b": (1.0, 0.0)}, True, seeds=3) is None
