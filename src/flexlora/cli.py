"""`flexlora`: the command line. Each subcommand lives in flexlora.commands.<name>.

Every user error is one line on stderr and exit status 2; only this layer prints.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from flexlora import __version__
from flexlora.errors import FlexLoraError, InternalError

# Subcommand modules, each exposing register(subparsers) that sets `func(args) -> int`.
COMMANDS = ("run", "compare", "aggregate", "data", "flower_local")
# The commands that load a transformers model (the others never import transformers).
LOADS_MODELS = frozenset({"run", "compare"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexlora",
        description="Federated fine-tuning of LLMs with heterogeneous LoRA ranks.",
    )
    parser.add_argument("--version", action="version", version=f"flexlora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not just its line"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"flexlora.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"flexlora.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a usage error
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if args.command in LOADS_MODELS:
        # transformers draws its own bars while loading weights: the CLI owns the terminal.
        # Only commands that load a model pay for importing it (over a second).
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    # Noise the user can do nothing about: peft reads a property transformers deprecated,
    # rouge-score announces its default tokenizer through absl's INFO log, and Flower's
    # SuperLink database lists its migration plugins through alembic's.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except FlexLoraError as e:
        if args.debug:
            traceback.print_exc()
        print(f"flexlora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except InternalError as e:
        # an engine bug: the traceback is what a bug report needs, and exit 1 (not 2)
        # keeps scripts from treating it as bad input
        traceback.print_exc()
        print(
            f"flexlora {args.command}: internal error (a flexlora bug, please report it "
            f"with the traceback above): {e}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"flexlora {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
