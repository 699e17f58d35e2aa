"""What a run leaves in its directory.

config.yaml (resolved), metrics.jsonl (one line a round), checkpoint.pt (the server state
after the last completed round, for `flexlora run --resume`), summary.json,
adapters/global/ and adapters/rank-<r>/ as PEFT folders, plots/*.png. Files are written
atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flexlora.config import ExperimentConfig, config_to_dict
from flexlora.errors import FlexLoraError

if TYPE_CHECKING:
    from flexlora.aggregation.base import GlobalUpdate
    from flexlora.data.types import FederatedDataset
    from flexlora.rounds import RankClass, ServerState

logger = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: draws seeded by (round, client id), no sampler state


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Floats that JSON can hold (NaN/Inf become null), tensors as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(value), indent=indent, sort_keys=False)


def peft_template(cfg: ExperimentConfig) -> dict[str, Any]:
    """The adapter_config.json fields every adapter of this run shares."""
    from flexlora.assets import resolve_model_path

    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": resolve_model_path(cfg.model.path),
        "target_modules": sorted(cfg.model.target_modules),
        "lora_dropout": cfg.lora.dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


class RunWriter:
    def __init__(self, out_dir: Path, cfg: ExperimentConfig) -> None:
        self.out_dir = out_dir
        self.cfg = cfg
        self.metrics_path = out_dir / "metrics.jsonl"
        self.info: dict[str, Any] = {}

    def start(
        self,
        *,
        dataset: FederatedDataset,
        classes: Sequence[RankClass],
        client_class: Mapping[str, str],
        tokenized_stats: Mapping[str, Any],
        resumed_rounds: int = 0,
    ) -> None:
        """Write config.yaml and start metrics.jsonl; a resumed run keeps its first
        `resumed_rounds` lines (a line past the checkpoint belongs to a round that is
        run again)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.out_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
        )
        kept = ""
        if resumed_rounds:
            lines = self.metrics_path.read_text().splitlines(keepends=True)
            kept = "".join(lines[:resumed_rounds])
        atomic_write_text(self.metrics_path, kept)
        counts = Counter(client_class.values())
        self.info = {
            "data": {
                "source": dataset.source,
                "seen_clients": len(dataset.seen),
                "unseen_clients": len(dataset.unseen),
                "train_examples": sum(len(c.train) for c in dataset.seen.values()),
                "skipped": dict(dataset.skipped),
                "tokenization": dict(tokenized_stats),
            },
            "rank_classes": [
                {
                    "key": c.key,
                    "types": c.type_indices,
                    "clients": counts.get(c.key, 0),
                    "ranks": sorted(set(c.ranks.values())),
                }
                for c in classes
            ],
        }

    def append_round(self, record: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(to_json(record) + "\n")
            f.flush()

    def checkpoint(self, state: ServerState, seconds_so_far: float) -> None:
        """Save the server state after a completed round (replacing the previous one).

        The round records (and the baseline evaluation) go in as JSON text, as in
        metrics.jsonl, so that the file holds
        nothing but tensors and plain values and loads with `weights_only=True`.
        """
        server_state = state.state_dict()
        server_state["history"] = to_json(server_state["history"])
        server_state["baseline"] = to_json(server_state["baseline"])
        atomic_torch_save(
            self.out_dir / CHECKPOINT,
            {
                "format": CHECKPOINT_FORMAT,
                "config": config_to_dict(self.cfg),
                "state": server_state,
                "seconds": seconds_so_far,
            },
        )

    def finish(
        self,
        *,
        state: ServerState,
        total_update: Mapping[str, GlobalUpdate],
        tokenizer: Any,
        seconds_total: float,
    ) -> dict[str, Any]:
        """Write the adapters, summary.json and plots; `total_update` is W - W0."""
        from flexlora.peft_io import write_adapter, write_global_adapter

        template = peft_template(self.cfg)
        adapters = self.out_dir / "adapters"
        if adapters.exists():  # left by an attempt that crashed while writing; rebuilt whole
            shutil.rmtree(adapters)
        write_global_adapter(adapters / "global", total_update, template)
        if state.class_factors is not None:
            for key, factors in state.class_factors.items():
                write_adapter(adapters / key, factors, template)
        tokenizer.save_pretrained(str(adapters / "global"))

        history = state.history
        evaluated = [r for r in history if "eval" in r]
        final_eval = evaluated[-1]["eval"] if evaluated else {}
        summary = {
            "method": self.cfg.method,
            "rounds_completed": state.round,
            "final": _final_metrics(final_eval),
            "baseline": _final_metrics(state.baseline) if state.baseline else None,
            "final_round_train_loss": history[-1]["train_loss"] if history else None,
            "timings": {
                "total_seconds": seconds_total,
                "train_seconds": sum(r["train_seconds"] for r in history),
                "aggregate_seconds": sum(r["aggregate_seconds"] for r in history),
                "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
            },
            **self.info,
            "history": [
                {
                    "round": r["round"],
                    "train_loss": r["train_loss"],
                    **_final_metrics(r.get("eval", {})),
                }
                for r in history
            ],
        }
        atomic_write_text(self.out_dir / "summary.json", to_json(summary, indent=2))
        try:
            from flexlora.plots import plot_run

            plot_run(self.out_dir, history, self.info["rank_classes"], state.baseline)
        except ImportError as e:  # matplotlib is a dependency; say so if a broken install lacks it
            logger.warning("plots skipped: %s", e)
        return summary


@dataclass(frozen=True)
class Checkpoint:
    """What `flexlora run --resume` starts from."""

    config: dict[str, Any]
    """The run's resolved config, as config.yaml holds it."""
    state: dict[str, Any]
    """`ServerState.state_dict()` after the last completed round."""
    seconds: float
    """Wall time the run had spent up to then."""

    @property
    def rounds_completed(self) -> int:
        return int(self.state["round"])


def read_checkpoint(out_dir: Path) -> Checkpoint:
    """The checkpoint of the run in `out_dir`; FlexLoraError when missing or damaged."""
    import torch

    path = out_dir / CHECKPOINT
    if not out_dir.is_dir():
        raise FlexLoraError(f"--resume: {out_dir} is not a directory")
    if not path.is_file():
        raise FlexLoraError(
            f"--resume: {out_dir} has no {CHECKPOINT} (no round of a flexlora run completed "
            "there): start the run again in an empty directory"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        state = dict(saved["state"])
        state["history"] = json.loads(state["history"])
        state["baseline"] = json.loads(state["baseline"])
        return Checkpoint(dict(saved["config"]), state, float(saved["seconds"]))
    except Exception as e:  # any damage to the file is the same user-facing fact
        reason = (str(e).strip().splitlines() or [""])[0][:200]  # torch's can run to pages
        raise FlexLoraError(f"--resume: {path} is unreadable ({type(e).__name__}: {reason})") from e


def _final_metrics(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("unseen", "seen"):
        if split in evaluation:
            out[f"{split}_rougeL"] = evaluation[split].get("rougeL")
            out[f"{split}_loss"] = evaluation[split].get("loss")
    return out
