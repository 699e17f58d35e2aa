"""flexlora's config as a Flower run config (`flwr run . --run-config ...`).

Flower's run config is flat (key = scalar), so it carries flexlora's own config by
reference: `config` (a YAML file, empty for the defaults), `set` (KEY=VALUE overrides
separated by ";", as `flexlora run --set` takes them) and `out` (the run folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flexlora.config import ExperimentConfig, load_config


def overrides_from(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


def config_from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    path = str(run_config.get("config", "") or "")
    return load_config(path or None, overrides_from(str(run_config.get("set", "") or "")))


def out_dir_from_run_config(run_config: Mapping[str, Any]) -> Path | None:
    out = str(run_config.get("out", "") or "")
    return Path(out) if out else None
