"""Figures of a run and of a comparison (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: a server or CI has no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from flexlora.atomic import atomic_write


def _save(fig: Any, path: Path) -> None:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _round_axis(ax: Any) -> None:
    """An x axis of rounds: whole-number ticks only (matplotlib would put 0.5, 1.5, ...
    between rounds on a short run)."""
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_run(
    out_dir: Path,
    history: Sequence[Mapping[str, Any]],
    rank_classes: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any] | None = None,
) -> None:
    """plots/metrics.png, plots/rank_distribution.png, plots/truncation_energy.png.

    `baseline`, the base model's evaluation, is drawn at round 0 of the metric curves.
    """
    plots = out_dir / "plots"
    rounds = [r["round"] for r in history]

    fig, (ax_loss, ax_rouge) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(
        rounds, [r["train_loss"] for r in history], marker="o", label="train loss (clients)"
    )
    evaluated = [*([{"round": 0, "eval": baseline}] if baseline else []), *history]
    evaluated = [r for r in evaluated if "eval" in r]
    for split, style in (("unseen", "-"), ("seen", "--")):
        points = [(r["round"], r["eval"][split]) for r in evaluated if split in r["eval"]]
        if points:
            xs = [p[0] for p in points]
            ax_loss.plot(
                xs, [p[1]["loss"] for p in points], style, marker="s", label=f"{split} loss"
            )
            ax_rouge.plot(
                xs, [p[1]["rougeL"] for p in points], style, marker="s", label=f"{split} Rouge-L"
            )
    for ax, title in ((ax_loss, "loss"), (ax_rouge, "Rouge-L")):
        _round_axis(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, plots / "metrics.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([c["key"] for c in rank_classes], [c["clients"] for c in rank_classes], color="tab:blue")
    ax.set_ylabel("clients")
    ax.set_title("rank classes")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    _save(fig, plots / "rank_distribution.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for c in rank_classes:
        series = []
        for r in history:
            energy = r.get("aggregation", {}).get("discarded_energy", {})
            values = [
                per_target[c["key"]] for per_target in energy.values() if c["key"] in per_target
            ]
            series.append(sum(values) / len(values) if values else float("nan"))
        ax.plot(rounds, series, marker="o", label=c["key"])
    _round_axis(ax)
    ax.set_ylabel("1 - |T_r(dW)|² / |dW|²  (mean over modules)")
    ax.set_title("energy discarded by truncation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, plots / "truncation_energy.png")


def plot_comparison(
    path: Path, table: Mapping[str, Mapping[str, tuple[float, float]]], metric: str
) -> None:
    """Grouped bars: methods × distributions, mean ± std over seeds."""
    methods = list(table)
    distributions = sorted({d for row in table.values() for d in row})
    width = 0.8 / max(1, len(distributions))
    fig, ax = plt.subplots(
        figsize=(max(6, 1.2 * len(methods) * max(1, len(distributions)) / 2), 3.8)
    )
    for j, dist in enumerate(distributions):
        xs = [i + j * width for i in range(len(methods))]
        means = [table[m].get(dist, (float("nan"), 0.0))[0] for m in methods]
        stds = [table[m].get(dist, (float("nan"), 0.0))[1] for m in methods]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=dist)
    ax.set_xticks([i + width * (len(distributions) - 1) / 2 for i in range(len(methods))], methods)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
