"""`flexlora flower-local --node SPEC [--node SPEC ...] [CONFIG] [--set ...] [--run]`:
a Flower deployment on this machine's loopback (a SuperLink and one SuperNode per
--node, TLS and SuperNode authentication on), for trying the deployment path.

Each --node is a SuperNode's node config, e.g. --node "client-id=a
data-path=/data/local_training_a.json max-rank=4" (`flexlora data export` writes such
files). With --run, the experiment of CONFIG / --set runs on it (run config mode
deployment) with `flwr run`, its log streamed, and everything is taken down after;
without, it stays up until Ctrl-C and prints the `flwr run` command to use.
`flexlora flower-local --app-dir` prints the Flower App folder to give `flwr run`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flexlora.errors import FlexLoraError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flower-local",
        help="a SuperLink and SuperNodes on loopback (TLS, node auth), optionally a run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config", nargs="?", help="YAML config of the run (default: the built-in defaults)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key of the run, as in flexlora run",
    )  # fmt: skip
    parser.add_argument(
        "--node", dest="nodes", action="append", default=[], metavar="SPEC",
        help="one SuperNode's node config: \"client-id=ID data-path=FILE max-rank=R\" "
        "(or rank-type=INDEX instead of max-rank); repeat per SuperNode",
    )  # fmt: skip
    parser.add_argument("--run", action="store_true", help="run the experiment, then stop")
    parser.add_argument("--out", type=Path, help="the run folder (default runs/<timestamp>)")
    parser.add_argument(
        "--workdir", type=Path,
        help="certificates, keys, Flower homes and logs (default: a new temp folder)",
    )  # fmt: skip
    parser.add_argument(
        "--no-auth", action="store_true", help="SuperNode authentication off (TLS stays on)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds the run may take (default 3600)"
    )
    parser.add_argument(
        "--app-dir", action="store_true", help="print flexlora's Flower App folder and exit"
    )
    parser.set_defaults(func=flower_local_command)


def flower_local_command(args: argparse.Namespace) -> int:
    from flexlora.flower import require_flower

    require_flower()
    from flexlora.config import load_config
    from flexlora.flower.local import LocalDeployment, NodeSpec, app_dir, write_echo

    if args.app_dir:
        print(app_dir())
        return 0
    if not args.nodes:
        raise FlexLoraError("give at least one --node (a SuperNode's node config)")
    nodes = [NodeSpec.parse(text) for text in args.nodes]
    # the server waits for this many nodes; the user's --set may still say otherwise
    overrides = [f"flower.supernodes={len(nodes)}", *args.overrides]
    config = str(Path(args.config).resolve()) if args.config else ""
    load_config(config or None, overrides)  # a bad config fails here, before any process
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="flexlora-flower-"))).resolve()
    out = (args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_config = {"config": config, "set": ";".join(overrides), "out": str(out),
                  "mode": "deployment"}  # fmt: skip

    # SIGTERM as Ctrl-C: leave through the `with` block, which ends every process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(f"starting a SuperLink and {len(nodes)} SuperNodes (logs in {workdir / 'logs'})")
    try:
        with LocalDeployment(workdir, nodes, auth=not args.no_auth) as deployment:
            print(f"SuperLink at {deployment.address}, {len(nodes)} SuperNodes online")
            if not args.run:
                _print_how_to_run(workdir, deployment.cli_home, app_dir(), run_config)
                while True:
                    time.sleep(3600)
            outcome = deployment.run_app(
                run_config, echo=write_echo(sys.stdout), timeout=args.timeout
            )
    except KeyboardInterrupt:
        print("interrupted: SuperLink and SuperNodes taken down", file=sys.stderr)
        return 130
    if not outcome.ok:
        raise FlexLoraError(f"run {outcome.run_id} ended {outcome.status}: {outcome.details}")
    print(f"run {outcome.run_id} completed: {out}")
    return 0


def _print_how_to_run(workdir: Path, cli_home: Path, app: Path, run_config: dict[str, str]) -> None:
    import shlex

    import tomli_w

    from flexlora.flower.local import CONNECTION

    # a TOML file: flwr reads it whole, so no value needs shell or TOML quoting by hand
    settings = workdir / "run-config.toml"
    settings.write_text(tomli_w.dumps(run_config))
    print(f"the run config is in {settings}; run the experiment from another shell with:")
    print(
        f"  FLWR_HOME={shlex.quote(str(cli_home))} flwr run {shlex.quote(str(app))} "
        f"{CONNECTION} --stream --run-config {shlex.quote(str(settings))}"
    )
    print("Ctrl-C takes it down")
