"""`flexlora run --engine flower`: the run on Flower's Simulation Engine (Ray).

The ServerApp runs flexlora's loop in this process (it writes the run folder, as the
in-process engine does); `flower.supernodes` SuperNodes run the ClientApp, each
reserving `flower.client_cpus` CPUs and `flower.client_gpus` GPUs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flexlora.config import ExperimentConfig
from flexlora.experiment import ExperimentResult
from flexlora.flower import require_flower
from flexlora.outputs import Checkpoint
from flexlora.simulation import RunObserver

logger = logging.getLogger(__name__)


class _RunSimulationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "The `run_simulation` function is deprecated" not in record.getMessage()


def run_on_simulation_engine(
    cfg: ExperimentConfig,
    out_dir: Path,
    observer: RunObserver,
    checkpoint: Checkpoint | None,
) -> ExperimentResult:
    require_flower()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from flexlora.flower.client_app import make_client_app
    from flexlora.flower.engine import serve

    # Flower's own progress lines would interleave with flexlora's; its warnings stay,
    # but for the notice that run_simulation is deprecated in favour of `flwr run`,
    # which flexlora offers too (flower/server_app.py).
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _RunSimulationNotice) for f in flwr_logger.filters):
        flwr_logger.addFilter(_RunSimulationNotice())
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome["result"] = serve(grid, cfg, out_dir, observer, checkpoint)
        except BaseException as e:  # re-raised below: Flower would only log it
            outcome["error"] = e

    backend = {
        "client_resources": {
            "num_cpus": cfg.flower.client_cpus,
            "num_gpus": cfg.flower.client_gpus,
        },
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    run_simulation(
        server_app=server_app,
        client_app=make_client_app(cfg),
        num_supernodes=cfg.flower.supernodes,
        backend_config=backend,  # type: ignore[arg-type]
    )
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        from flexlora.errors import InternalError

        raise InternalError("the Flower simulation ended without running the ServerApp")
    result: ExperimentResult = outcome["result"]
    return result
