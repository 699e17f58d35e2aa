"""`flexlora aggregate`: aggregate PEFT LoRA adapters trained anywhere, with any method.

    flexlora aggregate ADAPTER_DIR [ADAPTER_DIR ...] --out OUT [--method flexlora]
        [--weights N1,N2,...] [--ranks R1,R2,...] [--svd auto|exact|fast]
        [--dtype float32|float64] [--device cpu|cuda|auto] [--option KEY=VALUE ...]

Writes OUT/client-<i>/ (input i's next-round adapter, same tensor names), OUT/global/
(the exact global update dW) and OUT/summary.json. Everything is written into a temp
folder next to OUT and renamed at the end, so an error leaves no OUT behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlora.atomic import remove_stale_temps
from flexlora.errors import FlexLoraError

# torch, yaml and everything that imports torch load when the command runs, not when
# `flexlora --help` builds the parser (torch alone takes over a second to import).
if TYPE_CHECKING:
    import torch

    from flexlora.aggregation.base import AggregationResult, TargetSpec
    from flexlora.peft_io import PeftAdapter

logger = logging.getLogger(__name__)

_DTYPE_NAMES = ("float32", "float64")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `aggregate` subcommand."""
    p = subparsers.add_parser(
        "aggregate",
        help="aggregate PEFT LoRA adapters of any ranks into per-client and global adapters",
        description=(
            "Aggregate PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors) "
            "of possibly different ranks, alphas and rsLoRA settings. Writes OUT/client-<i>/ for "
            "each input i, OUT/global/ (the exact global update) and OUT/summary.json."
        ),
    )
    # nargs="+": no inputs is an argparse usage error (one line, exit 2).
    p.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR", help="PEFT LoRA adapter folders")
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (must not exist or be empty)"
    )
    p.add_argument("--method", default="flexlora", help="aggregation method (default: flexlora)")
    p.add_argument(
        "--weights",
        help="client weights, e.g. training examples per client: N1,N2,... (default: equal)",
    )
    p.add_argument(
        "--ranks",
        help="one uniform output rank per client R1,R2,... (default: each input's own ranks)",
    )
    p.add_argument(
        "--svd",
        choices=("auto", "exact", "fast"),
        help="SVD mode of methods that take one (default: the method's, auto)",
    )
    p.add_argument(
        "--dtype",
        choices=_DTYPE_NAMES,
        default="float32",
        help="compute dtype (adapters are written in float32)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="auto", help="compute device"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, VALUE parsed as YAML (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_aggregate)


def run_aggregate(args: argparse.Namespace) -> int:
    """Read, aggregate, write, report. Returns the exit status."""
    import torch

    from flexlora.aggregation import get_aggregation  # the registry, imported when needed
    from flexlora.peft_io import atomic_folder, read_adapter, write_adapter, write_global_adapter

    started = time.perf_counter()
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise FlexLoraError(
            f"{out}: output folder exists and is not empty (use --force to replace)"
        )
    # what an aggregate to this OUT that was killed left beside it (possibly hundreds of MB)
    remove_stale_temps(out.parent, recursive=False, target=out.name)
    seen: dict[Path, Path] = {}
    for folder in args.adapters:
        resolved = Path(folder).resolve()
        if resolved in seen:
            raise FlexLoraError(
                f"{folder}: the same adapter folder is given twice (as {seen[resolved]}); "
                "it would be weighted twice"
            )
        seen[resolved] = Path(folder)
    weights = parse_weights(args.weights, len(args.adapters))
    new_ranks = parse_ranks(args.ranks, len(args.adapters))
    method = get_aggregation(args.method).aggregate
    options = method_options(args)
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]

    adapters = [read_adapter(folder) for folder in args.adapters]
    check_compatible(adapters)
    targets = build_targets(adapters, new_ranks)
    read_s = time.perf_counter() - started

    clients = [
        {m: f.to(device=device, dtype=dtype) for m, f in a.factors.items()} for a in adapters
    ]
    t0 = time.perf_counter()
    try:
        result = method(clients, weights, targets, options)
    except FlexLoraError as e:
        # Methods speak of "client k"; say which folder that is, on the same line.
        legend = ", ".join(f"{k}={a.folder}" for k, a in enumerate(adapters))
        raise FlexLoraError(f"{e} (clients: {legend})") from e
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    aggregate_s = time.perf_counter() - t0
    logger.debug(
        "aggregated %d adapters with %s in %.3f s", len(adapters), args.method, aggregate_s
    )

    t0 = time.perf_counter()
    summary = build_summary(args, options, adapters, weights, targets, result)
    with atomic_folder(out, replace=args.force) as tmp:
        if result.client_factors is not None:
            for i, adapter in enumerate(adapters):
                write_adapter(
                    tmp / f"client-{i}",
                    result.client_factors[i],
                    adapter.config,
                    names_from=adapter,
                )
        write_global_adapter(
            tmp / "global", result.global_update, adapters[0].config, names_from=adapters[0]
        )
        summary["timing_seconds"] = {
            "read": read_s,
            "aggregate": aggregate_s,
            "write": time.perf_counter() - t0,
            "total": time.perf_counter() - started,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print_report(summary, out)
    return 0


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options handed to the method: --dtype and --svd where it takes them, then --option.

    Inputs are cast to --dtype before the call anyway; a method that has no `svd`
    option makes an explicit --svd an error rather than a silent no-op.
    """
    from flexlora.aggregation import get_aggregation
    from flexlora.aggregation.common import parse_options as check_options

    cls = get_aggregation(args.method).options
    known = {f.name for f in dataclasses.fields(cls)}
    options: dict[str, Any] = {}
    if "dtype" in known:
        options["dtype"] = args.dtype
    if args.svd is not None:
        if "svd" not in known:
            raise FlexLoraError(f"--svd: method {args.method} computes no SVD")
        options["svd"] = args.svd
    options.update(parse_options(args.option))
    check_options(cls, options, args.method)  # fail before reading any adapter
    return options


def parse_weights(text: str | None, count: int) -> list[float]:
    """`N1,N2,...` -> weights normalised to sum 1; equal weights when `text` is None."""
    if text is None:
        return [1.0 / count] * count
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise FlexLoraError(f"--weights: got {len(parts)} values for {count} adapters")
    values = []
    for i, part in enumerate(parts):
        try:
            w = float(part)
        except ValueError:
            raise FlexLoraError(f"--weights: value {i} ({part!r}) is not a number") from None
        if not math.isfinite(w) or w <= 0:
            raise FlexLoraError(f"--weights: value {i} ({part}) must be a positive finite number")
        values.append(w)
    total = sum(values)
    return [w / total for w in values]


def parse_ranks(text: str | None, count: int) -> list[int] | None:
    """`R1,R2,...` -> one positive int rank per adapter, or None when not given."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise FlexLoraError(f"--ranks: got {len(parts)} values for {count} adapters")
    ranks = []
    for i, part in enumerate(parts):
        if not part.isdigit() or int(part) < 1:
            raise FlexLoraError(f"--ranks: value {i} ({part!r}) must be a positive int")
        ranks.append(int(part))
    return ranks


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> {KEY: VALUE parsed as YAML} (so 3 is an int, true a bool)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FlexLoraError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise FlexLoraError(f"--option {key.strip()}: cannot parse {raw!r}") from None
    return options


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a device is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FlexLoraError("--device cuda: no CUDA device is available")
    return torch.device(name)


def check_compatible(adapters: Sequence[PeftAdapter]) -> None:
    """Every adapter must have the same modules with the same (out, in) shapes as the first."""
    first = adapters[0]
    for other in adapters[1:]:
        for module in sorted(first.factors.keys() - other.factors.keys()):
            raise FlexLoraError(
                f"{other.folder}: module {module} is missing (present in {first.folder})"
            )
        for module in sorted(other.factors.keys() - first.factors.keys()):
            raise FlexLoraError(f"{other.folder}: module {module} is not in {first.folder}")
        for module, f in sorted(other.factors.items()):
            expected = first.factors[module].shape
            if f.shape != expected:
                raise FlexLoraError(
                    f"{other.folder}: module {module} updates a {f.shape[0]}x{f.shape[1]} weight "
                    f"but {first.folder} a {expected[0]}x{expected[1]} one"
                )


def build_targets(
    adapters: Sequence[PeftAdapter], new_ranks: Sequence[int] | None
) -> dict[Hashable, TargetSpec]:
    """One TargetSpec per input index: its own ranks and scalings, or a uniform new rank.

    With a new rank R the input's alpha is re-applied at R (alpha / R, or alpha / sqrt(R)
    with rsLoRA), as PEFT would scale a fresh adapter of rank R with the same config.
    """
    from flexlora.aggregation.base import TargetSpec
    from flexlora.lora import lora_scaling

    targets: dict[Hashable, TargetSpec] = {}
    for i, adapter in enumerate(adapters):
        if new_ranks is None:
            ranks = adapter.ranks
            scalings = {m: f.scaling for m, f in adapter.factors.items()}
        else:
            # a rank above min(out, in) adds only zero components: capped, as `run` does
            ranks = {m: min(new_ranks[i], min(f.shape)) for m, f in adapter.factors.items()}
            capped = sorted(m for m in ranks if ranks[m] < new_ranks[i])
            if capped:
                logger.warning(
                    "--ranks: adapter %d asks rank %d; capped at min(out, in) on %d modules "
                    "(first: %s, to %d)",
                    i,
                    new_ranks[i],
                    len(capped),
                    capped[0],
                    ranks[capped[0]],
                )
            scalings = {
                m: lora_scaling(adapter.alphas[m], ranks[m], adapter.use_rslora)
                for m in adapter.factors
            }
        targets[i] = TargetSpec(ranks=ranks, scalings=scalings)
    return targets


def build_summary(
    args: argparse.Namespace,
    options: Mapping[str, Any],
    adapters: Sequence[PeftAdapter],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    result: AggregationResult,
) -> dict[str, Any]:
    """summary.json's content (timings are added once writing is done)."""
    discarded = result.diagnostics.get("discarded_energy", {})
    clients = []
    for i, adapter in enumerate(adapters):
        energy = {m: _finite_or_none(per.get(str(i))) for m, per in sorted(discarded.items())}
        known = [e for e in energy.values() if e is not None]
        clients.append(
            {
                "index": i,
                "source": str(adapter.folder),
                "folder": f"client-{i}" if result.client_factors is not None else None,
                "ranks": _compact(targets[i].ranks),
                "discarded_energy": energy,
                "discarded_energy_mean": sum(known) / len(known) if known else None,
            }
        )
    summary: dict[str, Any] = {
        "method": args.method,
        "inputs": [
            {
                "folder": str(a.folder),
                "ranks": _compact(a.ranks),
                "alpha": _compact(a.alphas),
                "use_rslora": a.use_rslora,
            }
            for a in adapters
        ],
        "weights": list(weights),
        "dtype": args.dtype,
        "device": args.device,
        "device_used": str(resolve_device(args.device)),
        "options": _jsonable(options),
        "clients_written": result.client_factors is not None,
        "clients": clients,
        "global": {
            "folder": "global",
            "ranks": _compact(
                {m: max(int(g.A.shape[0]), 1) for m, g in result.global_update.items()}
            ),
        },
        "merge_into_base": result.merge_into_base,
        "diagnostics": _jsonable(result.diagnostics),
    }
    if result.client_factors is None:
        summary["note"] = (
            f"method {args.method} gives clients no factors to continue from (they start a fresh "
            "LoRA each round): only global/ is written"
        )
    return summary


def print_report(summary: Mapping[str, Any], out: Path) -> None:
    """A short table: client, rank(s), mean discarded energy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"flexlora aggregate --method {summary['method']} -> {out}")
    table.add_column("client")
    table.add_column("rank(s)")
    table.add_column("discarded energy (mean)", justify="right")
    for c in summary["clients"]:
        ranks = c["ranks"] if isinstance(c["ranks"], int) else _rank_range(c["ranks"])
        energy = c["discarded_energy_mean"]
        table.add_row(
            c["folder"] or f"client-{c['index']} (not written)",
            str(ranks),
            "-" if energy is None else f"{energy:.4f}",
        )
    table.add_row("global", str(_rank_range(summary["global"]["ranks"])), "0 (exact)")
    console = Console()
    console.print(table)
    if "note" in summary:
        console.print(summary["note"])


def _rank_range(ranks: int | Mapping[str, int]) -> str:
    if isinstance(ranks, int):
        return str(ranks)
    lo, hi = min(ranks.values()), max(ranks.values())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _compact(per_module: Mapping[str, Any]) -> Any:
    """A single value when every module has the same one, else the sorted mapping."""
    values = set(per_module.values())
    return next(iter(values)) if len(values) == 1 else dict(sorted(per_module.items()))


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(x: Any) -> Any:
    """Diagnostics -> plain JSON (tensors to lists, non-finite floats to None)."""
    import torch  # already loaded by the aggregation; a dict lookup here

    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:
        return _finite_or_none(x)
    except (TypeError, ValueError):
        return str(x)
