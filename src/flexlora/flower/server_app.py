"""The ServerApp for `flwr run`: flexlora's run loop on the Deployment or Simulation
Engine, with flexlora's own config as the run config (see flower/run_config.py).

Run config keys: `config`, `set` and `out` (the run folder, default runs/<timestamp>),
`mode` ("simulation": interchangeable workers; "deployment": one client per SuperNode,
each declaring its own data and capacity in its node config), and `resume` (true: go
on from the checkpoint in `out`, with the config saved there; Flower itself cannot
resume a run). The run folder is the one `flexlora run` leaves.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flexlora.errors import FlexLoraError
from flexlora.flower.run_config import config_from_run_config, out_dir_from_run_config

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    _show_progress()
    try:
        run_from_run_config(grid, context.run_config)
    except FlexLoraError as e:  # one line in the run's log, then Flower marks it failed
        logger.error("flexlora: %s", e)
        raise


def _show_progress() -> None:
    """flexlora's INFO lines (rounds, evaluations) in the run's log, which `flwr run
    --stream` shows; the ServerApp process has no CLI to set this up."""
    import warnings

    flexlora_logger = logging.getLogger("flexlora")
    if not flexlora_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("flexlora: %(message)s"))
        flexlora_logger.addHandler(handler)
        flexlora_logger.setLevel(logging.INFO)
    # peft reads a property transformers deprecated: noise the user can do nothing about
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )


def run_from_run_config(grid: Grid, run_config: dict[str, Any]) -> None:
    from flexlora.commands.run import claim_out_dir, default_out_dir, read_resumable
    from flexlora.flower.engine import serve
    from flexlora.simulation import RunObserver

    out = (out_dir_from_run_config(run_config) or default_out_dir()).resolve()
    logger.info("flexlora: the run folder is %s", out)
    resume = bool(run_config.get("resume", False))
    mode = str(run_config.get("mode", "simulation"))
    with claim_out_dir(out, resume=resume):
        if resume:
            cfg, checkpoint = read_resumable(out)
        else:
            cfg, checkpoint = config_from_run_config(run_config), None
        result = serve(grid, cfg, out, RunObserver(), checkpoint, mode=mode)
    final = result.summary.get("final", {})
    logger.info("flexlora: %d rounds done, results in %s (%s)", cfg.federation.rounds, out, final)
