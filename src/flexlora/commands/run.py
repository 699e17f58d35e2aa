"""`flexlora run [CONFIG] [--set KEY=VALUE ...] [--out DIR] [--quiet]`: one experiment.

`flexlora run --resume DIR` goes on with the run in DIR after its last completed round.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlora.config import ExperimentConfig, config_from_dict, load_config
from flexlora.errors import FlexLoraError

# rich loads when output is printed, not when `flexlora --help` builds the parser.
if TYPE_CHECKING:
    from rich.console import Console

    from flexlora.outputs import Checkpoint


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="YAML config (default: the offline default experiment)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, VALUE parsed as YAML (e.g. --set federation.rounds=3)",
    )


def default_out_dir(prefix: str = "") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{prefix}{stamp}"


def check_out_dir(out: Path) -> None:
    """A new run's folder is missing or empty (but for the lock this process holds)."""
    from flexlora.runlock import LOCK_NAME

    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise FlexLoraError(f"output directory {out} exists and is not empty")


@contextlib.contextmanager
def claim_out_dir(out: Path, *, resume: bool) -> Iterator[Path]:
    """Hold the run folder's lock for the whole run: taken before anything is written (a
    second writer is refused naming the first), with the temps a killed writer left
    removed under it. A new run's folder must then be empty."""
    from flexlora.atomic import remove_stale_temps
    from flexlora.runlock import run_lock

    with run_lock(out, create=not resume):
        remove_stale_temps(out)
        if not resume:
            check_out_dir(out)
        yield out


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run one federated experiment")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output directory (default runs/<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--engine",
        choices=["in-process", "flower"],
        help="in-process (default), or flower: Flower's Simulation Engine with "
        "flower.supernodes SuperNodes (needs the flower extra)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="go on with the interrupted run in DIR from its last completed round "
        "(same config, same results as an uninterrupted run; no CONFIG, --set or --out)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from flexlora.assets import resolve_model_path

    if args.resume is not None:
        if args.config or args.overrides or args.out or args.engine:
            raise FlexLoraError(
                "--resume takes the run's own config: give no CONFIG, --set, --out or "
                "--engine with it"
            )
        out = args.resume
        if not out.is_dir():
            raise FlexLoraError(f"--resume: {out} is not a directory")
        with claim_out_dir(out, resume=True):
            cfg, checkpoint = read_resumable(out)
            return run_in(args, out, cfg, checkpoint)
    engine = [f"engine={args.engine}"] if args.engine else []
    cfg = load_config(args.config, [*args.overrides, *engine])
    if cfg.engine == "flower":
        from flexlora.flower import require_flower

        require_flower()  # missing flwr: say how to install it before anything is written
    resolve_model_path(cfg.model.path)  # a missing model folder: refused before any write
    out = args.out or default_out_dir()
    with claim_out_dir(out, resume=False):
        return run_in(args, out, cfg, None)


def read_resumable(out: Path) -> tuple[ExperimentConfig, Checkpoint | None]:
    """The config and checkpoint of the unfinished run in `out`; no checkpoint for a run
    stopped before its round-0 checkpoint (it starts again from round 1)."""
    from flexlora.config import read_config_file
    from flexlora.outputs import CHECKPOINT, METRICS, RUN_PLOTS, read_checkpoint

    config_file, metrics = out / "config.yaml", out / METRICS
    no_round = not metrics.is_file() or metrics.stat().st_size == 0
    if not (out / CHECKPOINT).exists() and config_file.is_file() and no_round:
        # stopped between writing its config and its first checkpoint (nothing computed
        # yet): the same run again, from round 1
        return config_from_dict(read_config_file(config_file)), None
    checkpoint = read_checkpoint(out)
    cfg = config_from_dict(checkpoint.config)
    # all rounds done but no summary.json or plots: a stop while writing the results,
    # which resuming finishes; with all of them there is nothing left to do
    finished = (out / "summary.json").is_file() and all(
        (out / "plots" / name).is_file() for name in RUN_PLOTS
    )
    if checkpoint.rounds_completed >= cfg.federation.rounds and finished:
        raise FlexLoraError(
            f"--resume: the run in {out} has already completed its {cfg.federation.rounds} rounds"
        )
    return cfg, checkpoint


def run_in(
    args: argparse.Namespace, out: Path, cfg: ExperimentConfig, checkpoint: Checkpoint | None
) -> int:
    """Run (or resume) `cfg` in `out`, whose lock the caller holds; print the summary."""
    from rich.console import Console

    from flexlora.commands.progress import RichObserver
    from flexlora.experiment import run_experiment
    from flexlora.outputs import CHECKPOINT
    from flexlora.simulation import RunObserver

    console = Console(stderr=True, quiet=args.quiet)
    try:
        if args.quiet:
            result = run_experiment(cfg, out, RunObserver(), checkpoint)
        else:
            done = checkpoint.rounds_completed if checkpoint else 0
            with RichObserver(console, cfg.federation.rounds, done_rounds=done) as observer:
                result = run_experiment(cfg, out, observer, checkpoint)
    except KeyboardInterrupt:
        if (out / CHECKPOINT).is_file():
            print(f"flexlora run: to go on from the last completed round: "
                  f"flexlora run --resume {out}", file=sys.stderr)  # fmt: skip
        raise
    print_summary(Console(), result.summary, out)
    return 0


def unseen_headline(summary: dict[str, Any]) -> str:
    """One plain sentence on what the run shows: the unseen clients' Rouge-L and loss after
    the last round, against the base model's when it was scored."""
    n_unseen = summary["data"]["unseen_clients"]
    if n_unseen == 0:
        return (
            "No unseen clients: this data holds out none, so the headline metric is not "
            "measured (hold some out with data.unseen.fraction or data.unseen.count)."
        )
    final, base = summary["final"], summary.get("baseline") or {}
    rounds = summary["rounds_completed"]
    where = f"On the {n_unseen} unseen clients (never trained on)"
    if not base:
        return (
            f"{where}, the global model scores Rouge-L {_fmt(final['unseen_rougeL'])} and "
            f"loss {_fmt(final['unseen_loss'], 3)} after {rounds} rounds "
            "(the base model was not scored: eval.baseline is false)."
        )
    gain = final["unseen_rougeL"] - base["unseen_rougeL"]
    drop = final["unseen_loss"] - base["unseen_loss"]
    return (
        f"{where}, {rounds} rounds of federated training took Rouge-L from "
        f"{_fmt(base['unseen_rougeL'])} to {_fmt(final['unseen_rougeL'])} ({gain:+.2f}) and "
        f"loss from {_fmt(base['unseen_loss'], 3)} to {_fmt(final['unseen_loss'], 3)} "
        f"({drop:+.3f})."
    )


def _fmt(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_summary(console: Console, summary: dict[str, Any], out: Path) -> None:
    """A short table a newcomer can read: what improved, by how much, and where it is."""
    from rich.table import Table

    table = Table(
        title=f"flexlora run · method {summary['method']} · {summary['rounds_completed']} rounds"
    )
    table.add_column("round", justify="right")
    # the round's own clients, a new sample each round: noisier than the eval columns
    table.add_column("train loss\n(round's clients)", justify="right")
    table.add_column("seen loss\n(eval split)", justify="right")
    table.add_column("unseen loss", justify="right")
    table.add_column("seen\nRouge-L", justify="right")
    table.add_column("unseen\nRouge-L", justify="right")
    base = summary.get("baseline")
    if base:
        table.add_row(
            "0 (base)",
            "—",
            _fmt(base.get("seen_loss"), 3),
            _fmt(base.get("unseen_loss"), 3),
            _fmt(base.get("seen_rougeL")),
            _fmt(base.get("unseen_rougeL")),
        )
    for row in summary["history"]:
        table.add_row(
            str(row["round"]),
            _fmt(row["train_loss"], 3),
            _fmt(row.get("seen_loss"), 3),
            _fmt(row.get("unseen_loss"), 3),
            _fmt(row.get("seen_rougeL")),
            _fmt(row.get("unseen_rougeL")),
        )
    console.print(table)
    timing = (
        f"Time {summary['timings']['total_seconds']:.0f} s "
        f"(aggregation {summary['timings']['aggregate_seconds']:.2f} s)."
    )
    console.print(unseen_headline(summary) + "  " + timing)
    console.print(f"Results in {out}/ (summary.json, metrics.jsonl, adapters/, plots/)")
