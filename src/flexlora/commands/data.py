"""`flexlora data inspect [CONFIG] [--set KEY=VALUE ...] [--json]`: a dataset as a federation.

The first thing to run on a new dataset: the number of seen and unseen clients,
examples per client (min / median / max per split), the category histogram (top 20,
then "other") and the held-out clients, from the same config keys as `flexlora run`.

`flexlora data export [CONFIG] [--set ...] --out DIR`: the federation as one folder of
files per client, `local_{training,eval,test}_<id>.json` (the layout `data.kind:
flexlora-ni` reads back) and `clients.json` ({"seen": [...], "unseen": [...]}): what a
Flower SuperNode of a deployment reads as its own data (`data-path`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlora.config import load_config
from flexlora.errors import FlexLoraError

# rich and the data pipeline (numpy, the sources) load when the command runs, not when
# `flexlora --help` builds the parser.
if TYPE_CHECKING:
    from rich.console import Console

MAX_IDS_SHOWN = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect a dataset as a federation")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = actions.add_parser(
        "inspect",
        help="clients, examples per client, categories and held-out clients",
        description=__doc__,
    )
    inspect.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    inspect.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.kind=dolly --set data.path=FILE",
    )
    inspect.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    inspect.set_defaults(func=inspect_command)

    export = actions.add_parser(
        "export", help="one folder of per-client JSON files (for Flower SuperNodes)"
    )
    export.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    export.set_defaults(func=export_command)


def inspect_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from rich.console import Console

    from flexlora.data.dataset import describe_dataset, load_federated_dataset

    summary = describe_dataset(load_federated_dataset(cfg.data, cfg.seed))
    summary["seed"] = cfg.seed
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, Console())
    return 0


def export_command(args: argparse.Namespace) -> int:
    from flexlora.atomic import atomic_folder

    cfg = load_config(args.config, args.overrides)
    from flexlora.data.dataset import load_federated_dataset

    dataset = load_federated_dataset(cfg.data, cfg.seed)
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FlexLoraError(f"{out}: exists and is not an empty folder")
    with atomic_folder(out, replace=out.exists()) as folder:
        for client in [*dataset.seen.values(), *dataset.unseen.values()]:
            for prefix, examples in (
                ("training", client.train),
                ("eval", client.eval),
                ("test", client.test),
            ):
                records = [dataclasses.asdict(e) for e in examples]
                (folder / f"local_{prefix}_{client.client_id}.json").write_text(
                    json.dumps(records, ensure_ascii=False)
                )
        clients = {"seen": list(dataset.seen), "unseen": list(dataset.unseen)}
        (folder / "clients.json").write_text(json.dumps(clients, indent=1))
    print(f"{len(dataset.seen)} seen and {len(dataset.unseen)} unseen clients written to {out}")
    return 0


def _number(value: float) -> str:
    return (
        f"{value:,.1f}"
        if isinstance(value, float) and not value.is_integer()
        else f"{int(value):,}"
    )


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    clients = summary["clients"]
    console.print(f"[bold]{summary['source']}[/bold] (seed {summary['seed']})")
    console.print(f"clients: {clients['seen']:,} seen, {clients['unseen']:,} unseen (held out)")

    from rich.table import Table

    from flexlora.data.dataset import SPLITS

    sizes = Table(title="examples per client")
    sizes.add_column("clients")
    sizes.add_column("split")
    for stat in ("min", "median", "max", "total"):
        sizes.add_column(stat, justify="right")
    for group, by_split in summary["examples_per_client"].items():
        if not clients[group]:
            continue
        for split in SPLITS:
            spread = by_split[split]
            sizes.add_row(
                group, split, *(_number(spread[s]) for s in ("min", "median", "max", "total"))
            )
    console.print(sizes)

    categories = Table(title=f"categories ({summary['num_categories']})")
    categories.add_column("category")
    categories.add_column("examples", justify="right")
    categories.add_column("clients", justify="right")
    for row in summary["categories"]:
        categories.add_row(row["category"], f"{row['examples']:,}", f"{row['clients']:,}")
    console.print(categories)

    unseen = summary["unseen_ids"]
    shown = ", ".join(unseen[:MAX_IDS_SHOWN]) or "none"
    more = f" … and {len(unseen) - MAX_IDS_SHOWN} more" if len(unseen) > MAX_IDS_SHOWN else ""
    console.print(f"held-out clients: {shown}{more}", highlight=False)
    if summary["skipped"]:
        skipped = ", ".join(f"{reason} {count:,}" for reason, count in summary["skipped"].items())
        console.print(f"skipped on purpose: {skipped}")
