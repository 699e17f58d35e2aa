"""Statistics of a comparison grid over seeds: % improvement, a paired test, the best row.

Pure functions on per-seed results, so `flexlora compare` (and its tests) can use them on
any grid. Runs of two rows are *paired by seed*: the i-th run of every row used the same
seed, hence the same data suite, partition and client sampling, and differs only in the
method. Pairing takes that shared per-seed variation out of the comparison.

The paired test is a permutation test on the seed pairs: under the null hypothesis "the
method and its baseline are exchangeable", each paired difference is as likely to have
either sign, so the observed |Σ dᵢ| is compared with |Σ sᵢ·dᵢ| over all 2ⁿ sign patterns
s ∈ {−1, +1}ⁿ. For n seeds that enumeration is exact (no distributional assumption, which
matters with 3-5 seeds); its smallest possible two-sided p-value is 2 / 2ⁿ.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TEST_NAME = "paired permutation test (exact sign-flip)"
"""The test's name, as the tables' captions and results.md give it."""

MAX_EXACT_PAIRS = 20
"""Beyond this many seed pairs the 2ⁿ sign patterns are sampled, not enumerated."""

RANDOM_PATTERNS = 100_000
"""Sign patterns drawn (with a fixed seed, so a table is reproducible) past MAX_EXACT_PAIRS."""


def paired_test_name(pairs: int) -> str:
    """The name of the test `sign_flip_p_value` runs on `pairs` seed pairs."""
    if pairs <= MAX_EXACT_PAIRS:
        return TEST_NAME
    return f"paired permutation test (sign-flip, {RANDOM_PATTERNS} random patterns)"


@dataclass(frozen=True)
class PairedComparison:
    """A method row against a baseline row in one column, over the seeds both have.

    `mean_difference` is mean(method − baseline) in the metric's own units (its sign is
    not oriented: for a loss a negative difference is a win); `improvement_pct` is
    oriented so that positive is better. `std_difference` and `p_value` are None with
    fewer than two pairs: one difference has no spread and a sign-flip test on it has
    no power (its p-value would be 1 whatever the margin).
    """

    method: str
    baseline: str
    pairs: int
    method_mean: float
    baseline_mean: float
    improvement_pct: float | None
    mean_difference: float
    std_difference: float | None
    p_value: float | None


def improvement_percent(method: float, baseline: float, higher_is_better: bool) -> float | None:
    """% improvement of `method` over `baseline`, positive when the method is better.

    higher is better (Rouge-L): (method − baseline) / |baseline| · 100
    lower is better (loss):     (baseline − method) / |baseline| · 100
    None when the baseline is 0 (no scale to relate the change to).
    """
    if baseline == 0:
        return None
    gain = method - baseline if higher_is_better else baseline - method
    return gain / abs(baseline) * 100.0


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired sign-flip permutation test.

    p = #{s ∈ {−1, +1}ⁿ : |Σ sᵢ·dᵢ| ≥ |Σ dᵢ|} / 2ⁿ, enumerated exactly for
    n ≤ MAX_EXACT_PAIRS. E.g. 3 differences of one sign: only the all-plus and all-minus
    patterns reach the observed |Σ|, so p = 2/8 = 0.25; 5 of one sign: 2/32 = 0.0625.
    Past MAX_EXACT_PAIRS, RANDOM_PATTERNS patterns are drawn and p = (1 + hits) /
    (1 + draws), the usual estimate that is never 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip_p_value: no paired difference")
    observed = abs(float(d.sum()))
    # Σ sᵢ·dᵢ of the pattern equal to the observed one may round differently from
    # d.sum(); a tolerance at the scale of the values keeps it (and exact ties) counted.
    tolerance = 1e-9 * float(np.abs(d).sum())
    if d.size <= MAX_EXACT_PAIRS:
        # all 2ⁿ signed sums, built one difference at a time (doubling the array)
        sums = np.zeros(1)
        for value in d:
            sums = np.concatenate([sums + value, sums - value])
        return float(np.count_nonzero(np.abs(sums) >= observed - tolerance)) / sums.size
    rng = np.random.default_rng(0)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(RANDOM_PATTERNS, d.size))
    hits = int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
    return (1 + hits) / (1 + RANDOM_PATTERNS)


def paired_comparison(
    method: str,
    baseline: str,
    method_runs: Sequence[float | None],
    baseline_runs: Sequence[float | None],
    higher_is_better: bool,
) -> PairedComparison | None:
    """`method` vs `baseline` over the seeds where both have a value; None if there is none.

    `method_runs[i]` and `baseline_runs[i]` are the same seed's results (None: that run
    has no value for the metric). The means, the improvement and the differences all use
    the same seeds, so that a seed missing on one side cannot tilt the comparison.
    """
    if len(method_runs) != len(baseline_runs):
        raise ValueError(
            f"{method} has {len(method_runs)} runs, {baseline} {len(baseline_runs)}: "
            "runs are paired by seed, one each"
        )
    pairs = [
        (float(m), float(b))
        for m, b in zip(method_runs, baseline_runs, strict=True)
        if m is not None and b is not None
    ]
    if not pairs:
        return None
    ms = np.array([m for m, _ in pairs])
    bs = np.array([b for _, b in pairs])
    diffs = ms - bs
    several = len(pairs) > 1
    return PairedComparison(
        method=method,
        baseline=baseline,
        pairs=len(pairs),
        method_mean=float(ms.mean()),
        baseline_mean=float(bs.mean()),
        improvement_pct=improvement_percent(float(ms.mean()), float(bs.mean()), higher_is_better),
        mean_difference=float(diffs.mean()),
        std_difference=float(diffs.std(ddof=1)) if several else None,  # sample std, as the cells
        p_value=sign_flip_p_value(diffs.tolist()) if several else None,
    )


def comparison_pairs(
    rows: Sequence[str],
    pairs: Mapping[str, str],
    reference: str,
    homogeneous: Collection[str],
) -> list[tuple[str, str]]:
    """(method, baseline) pairs to test, in row order, each once.

    A row gets its own baseline from `pairs` (e.g. flexlora -> fedit-min, later
    fedavg+flexlora -> fedavg-min) when both rows are in the grid, and every
    heterogeneous row (one not in `homogeneous`) is also tested against `reference`
    (the bucket-effect baseline, fedit-min), when that is in the grid.
    """
    present = set(rows)
    found: list[tuple[str, str]] = []
    for row in rows:
        candidates = [pairs[row]] if row in pairs else []
        if row not in homogeneous:
            candidates.append(reference)
        for baseline in candidates:
            if baseline in present and baseline != row and (row, baseline) not in found:
                found.append((row, baseline))
    return found


def marked_best(
    cells: Mapping[str, tuple[float, float]], higher_is_better: bool, seeds: int
) -> str | None:
    """The row to mark best in a column of (mean, std over seeds) cells, or None.

    The best mean is marked only when its margin over the second best exceeds the larger
    of the two rows' stds: a lead inside the seed-to-seed spread is not shown as a win.
    Rows with a NaN mean take no part; with fewer than two seeds (no spread known) or
    fewer than two rows nothing is marked.
    """
    ranked = [(row, mean, std) for row, (mean, std) in cells.items() if mean == mean]
    if seeds < 2 or len(ranked) < 2:
        return None
    ranked.sort(key=lambda item: item[1], reverse=higher_is_better)
    (best, best_mean, best_std), (_, second_mean, second_std) = ranked[0], ranked[1]
    margin, spread = abs(best_mean - second_mean), max(best_std, second_std)
    # a margin equal to the spread up to rounding (8.9 − 8.8 vs 0.1) is no clear lead
    clear = margin > spread and not math.isclose(margin, spread, rel_tol=1e-9, abs_tol=1e-12)
    return best if clear else None
