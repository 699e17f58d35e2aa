"""flexlora on Flower (flwr >= 1.42, Message API): the same round on other machines.

- `strategy.FlexLoraStrategy`: a Flower Strategy whose configure_train sends each node
  its own task (its rank class and start factors) and whose aggregate_train calls
  flexlora's aggregation, for every method;
- `client_app.app` / `server_app.app`: the ClientApp and ServerApp (`flwr run` finds
  them through the app declared in this package's pyproject);
- `simulation.run_on_simulation_engine`: `flexlora run --engine flower`.

flwr is an optional extra: `pip install 'flexlora[flower]'` (Python >= 3.11). Nothing
here is imported by the core, so flexlora runs without it.
"""

from __future__ import annotations

import os

from flexlora.errors import FlexLoraError

# Everything flexlora starts of Flower runs without telemetry or update checks.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
# Ray's notice that it will stop hiding GPUs from actors that ask for none: we ask
# explicitly (flower.client_gpus), so its future default is already ours.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def require_flower() -> None:
    """FlexLoraError saying how to install Flower when flwr is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FlexLoraError(
            "the Flower engine needs flwr: pip install 'flexlora[flower]' "
            "(Flower needs Python >= 3.11)"
        ) from None
