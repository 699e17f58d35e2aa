"""`flexlora compare [CONFIG] --methods a,b --distributions x,y [--seeds N]`: the paper's Table 2.

Every cell (method × distribution × seed) runs the same config with only those three
keys changed, so all cells share the data partition and the seeds. `fedit-min` and
`fedit-max` are FedIT at the smallest and largest rank type for every client (the
"bucket effect" baselines); their result does not depend on the distribution, so they
run once per seed and fill every column.

`flexlora compare --resume DIR` finishes an interrupted comparison: cells with a
summary.json are read back, a cell with a checkpoint goes on from it (as `run --resume`),
and the rest run. The grid comes from DIR/compare.json, written when the comparison began.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlora.atomic import atomic_write_text, remove_stale_temps
from flexlora.commands.run import add_config_arguments, claim_out_dir, default_out_dir
from flexlora.config import ExperimentConfig, config_from_dict, config_to_dict, load_config
from flexlora.errors import FlexLoraError
from flexlora.outputs import CHECKPOINT, read_checkpoint, to_json
from flexlora.ranks import DISTRIBUTION_NAMES
from flexlora.runlock import run_lock

# rich loads when output is printed, not when `flexlora --help` builds the parser.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from flexlora.comparison_stats import PairedComparison

DEFAULT_METHODS = "fedit-min,fedit-max,zeropad,hetlora,flora,ffa,flexlora"
DEFAULT_DISTRIBUTIONS = "uniform,heavy-tail-light"
HOMOGENEOUS_ENDS = {"min": min, "max": max}
"""`RECIPE-min` / `RECIPE-max`: that recipe with homogeneous averaging, every client at the
smallest / largest rank type (the bucket effect); `fedit-min` is FedIT as its paper runs
it, `fedavg-min` FedAvg with SGD, and so on for every recipe."""


def homogeneous_row(name: str) -> tuple[str, Any] | None:
    """(method, min or max) of a homogeneous row name, or None for an ordinary method."""
    recipe, _, end = name.rpartition("-")
    if not recipe or end not in HOMOGENEOUS_ENDS:
        return None
    return ("fedit" if recipe == "fedit" else f"{recipe}+fedit"), HOMOGENEOUS_ENDS[end]


def is_homogeneous(name: str) -> bool:
    return homogeneous_row(name) is not None


GRID_FILE = "compare.json"
"""The comparison's grid and base config, written when it begins (for --resume)."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="methods × rank distributions, like the paper's Table 2"
    )
    add_config_arguments(parser)
    # None marks "not given", so that --resume can refuse them
    parser.add_argument("--methods", help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument(
        "--distributions",
        help=f"comma-separated, from {', '.join(DISTRIBUTION_NAMES)} "
        f"(default {DEFAULT_DISTRIBUTIONS})",
    )
    parser.add_argument("--seeds", type=int, help="seeds per cell: seed, seed+1, ... (default 1)")
    parser.add_argument(
        "--out", type=Path, help="output directory (default runs/compare-<timestamp>)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="finish the interrupted comparison in DIR (its own grid and config; "
        "no CONFIG, --set, --methods, --distributions, --seeds or --out)",
    )
    parser.set_defaults(func=main)


def _split(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise FlexLoraError(f"--{what} lists nothing")
    if len(set(items)) != len(items):
        raise FlexLoraError(f"--{what} lists a name twice: {text}")
    return items


def _rank_size(rank_type: Any) -> float:
    return float(rank_type) if isinstance(rank_type, int) else float(sum(rank_type.values()))


def cell_config(
    base: ExperimentConfig, method: str, distribution: str, seed: int
) -> ExperimentConfig:
    """The base config with method, distribution and seed set (and one type for fedit-*).

    The tables read only the unseen clients' scores after the last round, so a cell
    scores the global model once, after its last round, and the seen clients never:
    per-round and seen scores would cost most of a cell's time and change no figure.
    """
    from dataclasses import replace

    eval_cfg = replace(base.eval, every=base.federation.rounds, seen=False)
    ranks = replace(base.ranks, distribution=distribution)
    name = method
    row = homogeneous_row(method)
    if row is not None:
        name, pick = row
        chosen = pick(base.ranks.types, key=_rank_size)
        ranks = replace(base.ranks, types=[chosen], distribution="uniform", assign={})
    return replace(base, method=name, ranks=ranks, seed=seed, eval=eval_cfg)


def main(args: argparse.Namespace) -> int:
    from flexlora.assets import resolve_model_path

    if args.resume is not None:
        grid_args = (args.methods, args.distributions, args.seeds, args.out)
        if args.config or args.overrides or any(a is not None for a in grid_args):
            raise FlexLoraError(
                "--resume takes the comparison's own grid and config: give no CONFIG, --set, "
                "--methods, --distributions, --seeds or --out with it"
            )
        out = args.resume
        if not out.is_dir():
            raise FlexLoraError(f"--resume: {out} is not a directory")
        with claim_out_dir(out, resume=True):  # before reading: a writer may be under way
            base, methods, distributions, seeds = read_grid(out)
            check_grid(base, methods, distributions)
            return compare_in(args, out, base, methods, distributions, seeds)
    base = load_config(args.config, args.overrides)
    grid_cfg = base.compare  # a preset's grid; the command line's flags win
    methods = _split(args.methods or ",".join(grid_cfg.methods) or DEFAULT_METHODS, "methods")
    distributions = _split(
        args.distributions or ",".join(grid_cfg.distributions) or DEFAULT_DISTRIBUTIONS,
        "distributions",
    )
    n_seeds = args.seeds if args.seeds is not None else grid_cfg.seeds
    if n_seeds < 1:
        raise FlexLoraError(f"--seeds must be >= 1, got {n_seeds}")
    seeds = [base.seed + i for i in range(n_seeds)]
    check_grid(base, methods, distributions)
    resolve_model_path(base.model.path)  # a missing model folder: refused before any write
    out = args.out or default_out_dir("compare-")
    with claim_out_dir(out, resume=False):
        grid: dict[str, Any] = {"config": config_to_dict(base), "methods": methods}
        grid |= {"distributions": distributions, "seeds": seeds}
        atomic_write_text(out / GRID_FILE, to_json(grid, indent=2))
        return compare_in(args, out, base, methods, distributions, seeds)


def check_grid(base: ExperimentConfig, methods: list[str], distributions: list[str]) -> None:
    """Every method and distribution of the grid is known."""
    from flexlora.methods import get_federated_method
    from flexlora.ranks import distribution_probabilities

    for m in methods:
        row = homogeneous_row(m)
        try:
            get_federated_method(row[0] if row else m)
        except FlexLoraError as e:
            raise FlexLoraError(f"--methods {m}: {e} (or RECIPE-min / RECIPE-max)") from None
    for d in distributions:
        distribution_probabilities(d, len(base.ranks.types))  # raises on an unknown name


def compare_in(
    args: argparse.Namespace,
    out: Path,
    base: ExperimentConfig,
    methods: list[str],
    distributions: list[str],
    seeds: list[int],
) -> int:
    """Run (or finish) the grid in `out`, whose lock the caller holds; write the tables."""
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {d: [] for d in distributions} for m in methods
    }
    baselines: dict[int, dict[str, Any]] = {}
    cells = [
        (m, d, s)
        for m in methods
        for d in distributions
        for s in seeds
        if not (is_homogeneous(m) and d != distributions[0])
    ]
    try:
        for i, (method, dist, seed) in enumerate(cells, 1):
            cfg = cell_config(base, method, dist, seed)
            label = method if is_homogeneous(method) else f"{method}/{dist}"
            column = "all" if is_homogeneous(method) else dist
            cell_dir = out / "cells" / method / column / f"seed{seed}"
            console.print(f"[{i}/{len(cells)}] {label} seed {seed}", end="")
            summary = _run_cell(cfg, cell_dir, label, console, args.quiet)
            for target in distributions if is_homogeneous(method) else [dist]:
                results[method][target].append(summary["final"])
            if summary.get("baseline"):  # the same base model in every cell of a seed
                baselines.setdefault(seed, summary["baseline"])
    except FlexLoraError:
        # A config every cell shares fails in the first cell, before it writes anything:
        # then the comparison leaves nothing behind either (the lock removes the folder
        # it made once it is empty).
        if args.resume is None and not (out / "cells").exists():
            (out / GRID_FILE).unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        print(f"flexlora compare: to finish it: flexlora compare --resume {out}", file=sys.stderr)
        raise

    if baselines:  # a reference row: the base model before any round, scored the same way
        runs = [baselines[s] for s in seeds if s in baselines]
        results = {BASE_ROW: {d: list(runs) for d in distributions}, **results}
    write_results(out, results, seeds)
    for metric in METRICS:
        Console().print(results_table(results, metric, len(seeds)))
        for table in statistics_tables(results, metric, len(seeds)):
            Console().print(table)
    Console().print(
        f"Results in {out}/ (results.md, results.csv, results_stats.csv, results.json, "
        "results.png, cells/)"
    )
    return 0


def _run_cell(
    cfg: ExperimentConfig, cell_dir: Path, label: str, console: Console, quiet: bool
) -> dict[str, Any]:
    """One cell's summary: read back when it finished earlier, else run (from its
    checkpoint when an interrupted comparison left one)."""
    summary_path = cell_dir / "summary.json"
    if summary_path.is_file():
        console.print(": done earlier")
        return dict(json.loads(summary_path.read_text()))
    # a cell is a run folder: `run --resume` on it meanwhile would be a second writer
    with run_lock(cell_dir):
        remove_stale_temps(cell_dir)
        return _run_cell_locked(cfg, cell_dir, label, console, quiet)


def _run_cell_locked(
    cfg: ExperimentConfig, cell_dir: Path, label: str, console: Console, quiet: bool
) -> dict[str, Any]:
    from flexlora.commands.progress import RichObserver
    from flexlora.experiment import run_experiment
    from flexlora.simulation import RunObserver

    checkpoint = read_checkpoint(cell_dir) if (cell_dir / CHECKPOINT).is_file() else None
    if checkpoint is not None and not same_config(checkpoint.config, cfg):
        raise FlexLoraError(f"--resume: {cell_dir} holds a run of another config")
    done = checkpoint.rounds_completed if checkpoint else 0
    console.print(f": resuming after round {done}" if checkpoint else "")
    if quiet:
        return run_experiment(cfg, cell_dir, RunObserver(), checkpoint).summary
    with RichObserver(console, cfg.federation.rounds, label[:22], done_rounds=done) as observer:
        return run_experiment(cfg, cell_dir, observer, checkpoint).summary


def same_config(saved: dict[str, Any], cfg: ExperimentConfig) -> bool:
    """Whether a cell's checkpointed config is `cfg`, compared after parsing both: a key
    added to flexlora since the checkpoint was written, at its default, is no change."""
    try:
        return config_to_dict(config_from_dict(saved)) == config_to_dict(cfg)
    except FlexLoraError:  # a config this flexlora cannot read is not this cell's
        return False


def read_grid(out: Path) -> tuple[ExperimentConfig, list[str], list[str], list[int]]:
    """(base config, methods, distributions, seeds) of the comparison in `out`."""
    path = out / GRID_FILE
    if not path.is_file():
        raise FlexLoraError(f"--resume: {out} has no {GRID_FILE} (not a flexlora comparison)")
    try:
        grid = json.loads(path.read_text())
        return (
            config_from_dict(grid["config"]),
            [str(m) for m in grid["methods"]],
            [str(d) for d in grid["distributions"]],
            [int(s) for s in grid["seeds"]],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise FlexLoraError(f"--resume: {path} is unreadable ({type(e).__name__}: {e})") from e


def _mean_std(given: list[float | None]) -> tuple[float, float]:
    values = [v for v in given if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


Results = dict[str, dict[str, list[dict[str, Any]]]]
"""row -> distribution -> one final-metrics record per seed, in seed order."""


def summarise(results: Results, metric: str) -> dict[str, dict[str, tuple[float, float]]]:
    return {
        m: {d: _mean_std([r.get(metric) for r in runs]) for d, runs in row.items()}
        for m, row in results.items()
    }


BASE_ROW = "base model"
"""The reference row of the tables: the model before fine-tuning."""

# Metrics of the comparison and the decimals they are shown with (Rouge-L is 0-100).
METRICS = {"unseen_rougeL": 2, "unseen_loss": 3}
HIGHER_IS_BETTER = {"unseen_rougeL": True, "unseen_loss": False}


def paired_baseline(row: str) -> str | None:
    """The homogeneous row a "recipe + FlexLoRA" row is measured against (the paper's
    Table 3): `flexlora` (FedIT's recipe) -> `fedit-min`, `RECIPE+flexlora` ->
    `RECIPE-min`; and `RECIPE-max` -> `RECIPE-min` (the bucket effect: what the largest
    rank gains over the smallest); None for any other row."""
    if row == "flexlora":
        return "fedit-min"
    row_end = homogeneous_row(row)
    if row_end is not None and row_end[1] is max:
        return f"{row.removesuffix('-max')}-min"
    recipe, plus, aggregation = row.partition("+")
    if plus and aggregation == "flexlora":
        return "fedit-min" if recipe in ("local", "fedit") else f"{recipe}-min"
    return None


def paired_baselines(rows: Sequence[str]) -> dict[str, str]:
    return {row: base for row in rows if (base := paired_baseline(row)) is not None}


REFERENCE_ROW = "fedit-min"
"""Every heterogeneous method is also tested against FedIT at the smallest rank: the
bucket-effect baseline that heterogeneous ranks are meant to beat."""


@dataclass(frozen=True)
class MetricStatistics:
    """One metric's statistics over the grid: the marked best row and the paired tests,
    per distribution column."""

    best: dict[str, str | None]
    comparisons: dict[str, list[PairedComparison]]


def grid_statistics(results: Results, seeds: int) -> dict[str, MetricStatistics]:
    """Per metric: the best row of each column (marked only when its lead exceeds the
    spread) and every (method, baseline) comparison, runs paired by seed."""
    from flexlora.comparison_stats import comparison_pairs, marked_best, paired_comparison

    rows = [m for m in results if m != BASE_ROW]  # a reference, not a contender
    paired = paired_baselines(rows)
    homogeneous = {*(m for m in rows if is_homogeneous(m)), *paired.values()}
    pairs = comparison_pairs(rows, paired, REFERENCE_ROW, homogeneous)
    distributions = list(next(iter(results.values())))
    out: dict[str, MetricStatistics] = {}
    for metric in METRICS:
        higher = HIGHER_IS_BETTER[metric]
        means = summarise(results, metric)
        best = {
            d: marked_best({m: means[m][d] for m in rows}, higher, seeds) for d in distributions
        }
        comparisons: dict[str, list[PairedComparison]] = {}
        for d in distributions:
            found = (
                paired_comparison(
                    m,
                    b,
                    [r.get(metric) for r in results[m][d]],
                    [r.get(metric) for r in results[b][d]],
                    higher,
                )
                for m, b in pairs
            )
            comparisons[d] = [c for c in found if c is not None]
        out[metric] = MetricStatistics(best, comparisons)
    return out


def _cell(mean: float, std: float, seeds: int, digits: int) -> str:
    """'mean ± std' over seeds; the mean alone for one seed (a std of one value is no spread)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def _csv_cells(mean: float, std: float, seeds: int) -> list[str]:
    """Mean and std; for one seed the std stays empty rather than claiming a spread of 0."""
    return [f"{mean:.4f}", f"{std:.4f}" if seeds > 1 else ""]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _p_value(c: PairedComparison) -> str:
    if c.p_value is None:
        return f"n/a ({c.pairs} seed)"
    return "< 0.001" if c.p_value < 0.001 else f"{c.p_value:.3g}"  # 0.0625 in full


def _difference(c: PairedComparison, digits: int) -> str:
    """'Δ ± std of the differences, p' of one comparison."""
    spread = "" if c.std_difference is None else f" ± {c.std_difference:.{digits}f}"
    return f"{c.mean_difference:+.{digits}f}{spread}, p {_p_value(c)}"


def _test_name(stats: dict[str, MetricStatistics]) -> str:
    from flexlora.comparison_stats import paired_test_name

    pairs = [c.pairs for s in stats.values() for cs in s.comparisons.values() for c in cs]
    return paired_test_name(max(pairs, default=0))


MARK_RULE = (
    "★ marks the best mean of a column only when its lead over the second best exceeds "
    "the larger of their two stds over seeds (never with one seed)"
)


def _direction(metric: str) -> str:
    return "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"


def _improvement_caption(metric: str) -> str:
    formula = "(method − baseline)" if HIGHER_IS_BETTER[metric] else "(baseline − method)"
    return (
        f"{formula} / |baseline| · 100 on the means over seeds ({_direction(metric)}; "
        "positive: the method is better)."
    )


def _test_caption(metric: str, test: str, seeds: int) -> str:
    paired = (
        "Each seed's two runs are paired: the same seed draws the same data suite and "
        "partition for both."
    )
    if seeds < 2:  # no spread to show and nothing to test: say so rather than print ± 0
        return (
            f"Δ = method − baseline on the one seed ({_direction(metric)}); p: two-sided "
            f"{test}, which needs two seeds or more. {paired}"
        )
    return (
        f"Δ = mean over seeds of (method − baseline) ± std of the paired differences "
        f"({_direction(metric)}); p: two-sided {test}. {paired}"
    )


def results_table(results: Results, metric: str, seeds: int) -> Table:
    from rich.table import Table

    best = grid_statistics(results, seeds)[metric].best
    spread = "mean ± std over seeds" if seeds > 1 else "one seed"
    table = Table(title=f"{metric} on unseen clients ({spread})", caption=MARK_RULE)
    distributions = list(next(iter(results.values())))
    table.add_column("method")
    for d in distributions:
        table.add_column(d, justify="right")
    for m, row in summarise(results, metric).items():
        cells = [_cell(*row[d], seeds, METRICS[metric]) for d in distributions]
        cells = [
            f"[bold]{c} ★[/bold]" if best[d] == m else c
            for c, d in zip(cells, distributions, strict=True)
        ]
        table.add_row(m, *cells)
    return table


def _statistics_sections(
    metric: str, stats: dict[str, MetricStatistics]
) -> list[tuple[str, str, list[tuple[str, list[str]]]]]:
    """(title, caption, rows) of a metric's % improvement table (paired rows only) and
    paired-test table (every comparison); a table without rows is left out."""
    ours = stats[metric]
    distributions = list(ours.comparisons)
    by_pair = [{(c.method, c.baseline): c for c in ours.comparisons[d]} for d in distributions]
    keys = list(dict.fromkeys(key for found in by_pair for key in found))  # grid order
    paired = [key for key in keys if paired_baseline(key[0]) == key[1]]
    keys_pairs = [c.pairs for found in by_pair for c in found.values()]

    def rows(
        chosen: list[tuple[str, str]], show: Callable[[PairedComparison], str]
    ) -> list[tuple[str, list[str]]]:
        return [
            (f"{m} vs {b}", [show(f[(m, b)]) if (m, b) in f else "n/a" for f in by_pair])
            for m, b in chosen
        ]

    digits = METRICS[metric]
    sections = [
        (
            f"{metric}: % improvement over the homogeneous baseline",
            _improvement_caption(metric),
            rows(paired, lambda c: _percent(c.improvement_pct)),
        ),
        (
            f"{metric}: paired differences over seeds",
            _test_caption(metric, _test_name(stats), max(keys_pairs, default=0)),
            rows(keys, lambda c: _difference(c, digits)),
        ),
    ]
    return [section for section in sections if section[2]]


def statistics_tables(results: Results, metric: str, seeds: int) -> list[Table]:
    """The console's % improvement and paired-test tables of a metric."""
    from rich.table import Table

    stats = grid_statistics(results, seeds)
    distributions = list(next(iter(results.values())))
    tables: list[Table] = []
    for title, caption, rows in _statistics_sections(metric, stats):
        table = Table(title=title, caption=caption)
        table.add_column("method vs baseline")
        for d in distributions:
            table.add_column(d, justify="right")
        for label, cells in rows:
            table.add_row(label, *cells)
        tables.append(table)
    return tables


def _markdown_statistics(metric: str, stats: dict[str, MetricStatistics]) -> list[str]:
    """results.md's % improvement and paired-test tables of one metric."""
    distributions = list(stats[metric].comparisons)
    lines: list[str] = []
    for title, caption, rows in _statistics_sections(metric, stats):
        lines += [
            f"### {title}",
            "",
            "| method vs baseline | " + " | ".join(distributions) + " |",
            "|---|" + "---:|" * len(distributions),
        ]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        lines += ["", caption, ""]
    return lines


STATS_CSV_HEADER = [
    "metric", "distribution", "method", "baseline", "seeds", "method_mean", "baseline_mean",
    "improvement_pct", "mean_difference", "std_difference", "p_value", "test",
]  # fmt: skip


def _stats_csv(stats: dict[str, MetricStatistics]) -> str:
    """results_stats.csv: one row per metric × distribution × (method, baseline); an
    empty field where a figure does not exist (one seed: no std, no p-value)."""
    from flexlora.comparison_stats import paired_test_name

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(STATS_CSV_HEADER)
    for metric, ours in stats.items():
        for d, found in ours.comparisons.items():
            for c in found:
                writer.writerow(
                    [
                        metric, d, c.method, c.baseline, c.pairs,
                        f"{c.method_mean:.6g}", f"{c.baseline_mean:.6g}",
                        number(c.improvement_pct), f"{c.mean_difference:.6g}",
                        number(c.std_difference), number(c.p_value),
                        paired_test_name(c.pairs) if c.p_value is not None else "",
                    ]
                )  # fmt: skip
    return buffer.getvalue()


def _stats_json(stats: dict[str, MetricStatistics]) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        metric: {
            "higher_is_better": HIGHER_IS_BETTER[metric],
            "test": _test_name(stats),
            "best": ours.best,
            "best_rule": MARK_RULE,
            "comparisons": {d: [asdict(c) for c in cs] for d, cs in ours.comparisons.items()},
        }
        for metric, ours in stats.items()
    }


def write_results(out: Path, results: Results, seeds: list[int]) -> None:
    """results.md, results.csv, results_stats.csv, results.json and results.png."""
    from flexlora.plots import plot_comparison

    stats = grid_statistics(results, len(seeds))
    distributions = list(next(iter(results.values())))
    lines = [f"# flexlora compare (seeds {', '.join(map(str, seeds))})", ""]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "metric",
            "method",
            *[f"{d} {s}" for d in distributions for s in ("mean", "std", "best")],
        ]
    )
    for metric, digits in METRICS.items():
        table = summarise(results, metric)
        best = stats[metric].best
        lines += [
            f"## {metric}",
            "",
            "| method | " + " | ".join(distributions) + " |",
            "|---|" + "---:|" * len(distributions),
        ]
        for m, row in table.items():
            cells = [_cell(*row[d], len(seeds), digits) for d in distributions]
            cells = [
                f"**{c}** ★" if best[d] == m else c
                for c, d in zip(cells, distributions, strict=True)
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
            csv_cells = [
                c
                for d in distributions
                for c in [
                    *_csv_cells(*row[d], len(seeds)),
                    # empty where no mark can be given (one seed, the reference row)
                    "" if len(seeds) < 2 or m == BASE_ROW else str(best[d] == m).lower(),
                ]
            ]
            writer.writerow([metric, m, *csv_cells])
        lines += ["", f"{MARK_RULE}.", ""]
        lines += _markdown_statistics(metric, stats)
    lines.append(
        "fedit-min / fedit-max: every client at the smallest / largest rank type; "
        "one run per seed fills every column."
    )
    if BASE_ROW in results:
        lines.append(f"{BASE_ROW}: the pretrained model before any round, scored the same way.")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results_stats.csv", _stats_csv(stats))
    record = {"seeds": seeds, "runs": results, "statistics": _stats_json(stats)}
    atomic_write_text(out / "results.json", to_json(record, indent=2))
    plot_comparison(out / "results.png", summarise(results, "unseen_rougeL"), "unseen Rouge-L")
