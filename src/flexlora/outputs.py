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
import shutil
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flexlora.atomic import atomic_write, atomic_write_text
from flexlora.config import ExperimentConfig, config_to_dict
from flexlora.errors import FlexLoraError

if TYPE_CHECKING:
    from flexlora.aggregation.base import GlobalUpdate
    from flexlora.data.types import FederatedDataset
    from flexlora.rounds import RankClass, ServerState

logger = logging.getLogger(__name__)


CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 2  # 2: draws seeded by (round, client id), no sampler state
RUN_PLOTS = ("metrics.png", "rank_distribution.png", "truncation_energy.png")
"""What plots.plot_run writes under plots/, last of a run's results."""


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


class NonFiniteValueError(FlexLoraError):
    """A NaN or Inf where a number is to be written: the training diverged."""

    def __init__(self, path: str, value: float, where: str = "") -> None:
        self.path, self.value = path, value
        super().__init__(
            f"{where}{path or 'value'} is {value} (the training diverged: lower federation.lr)"
        )


def _jsonable(value: Any, path: str = "") -> Any:
    """Plain JSON values (tensors as lists); NonFiniteValueError naming the key path of a
    NaN or Inf. JSON would write it as null, which reads as "not measured": a diverged
    run would look like one that simply skipped its evaluation."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteValueError(path, value)
        return value
    if isinstance(value, Mapping):
        prefix = f"{path}." if path else ""
        return {str(k): _jsonable(v, f"{prefix}{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist(), path)
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text of `value`; a NaN or Inf in it is a FlexLoraError naming where it is
    (and the round, for a round record)."""
    try:
        plain = _jsonable(value)
    except NonFiniteValueError as e:
        round_index = value.get("round") if isinstance(value, Mapping) else None
        where = f"round {round_index}: " if isinstance(round_index, int) else ""
        raise NonFiniteValueError(e.path, e.value, where) from None
    return json.dumps(plain, indent=indent, sort_keys=False, allow_nan=False)


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
        self.metrics_path = out_dir / METRICS
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
            kept = "".join(read_metrics_lines(self.out_dir, resumed_rounds)[:resumed_rounds])
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
        line = to_json(record) + "\n"  # a non-finite value raises before the file is touched
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(line)
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


def read_metrics_lines(out_dir: Path, rounds_completed: int) -> list[str]:
    """metrics.jsonl's lines (newline kept), at least one per completed round, else a
    FlexLoraError: a resumed run keeps them, and they cannot be made up."""
    path = out_dir / METRICS
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        raise FlexLoraError(
            f"--resume: {path} is missing (it holds the records of the {rounds_completed} "
            "completed rounds): put it back, or start the run again in an empty directory"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise FlexLoraError(f"--resume: {path} is unreadable ({type(e).__name__})") from e
    if len(lines) < rounds_completed:
        raise FlexLoraError(
            f"--resume: {path} has {len(lines)} round records, the checkpoint "
            f"{rounds_completed}: it was cut short; start the run again in an empty directory"
        )
    return lines


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
        _check_zip_checksums(path)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        state = dict(saved["state"])
        state["history"] = json.loads(state["history"])
        state["baseline"] = json.loads(state["baseline"])
        checkpoint = Checkpoint(dict(saved["config"]), state, float(saved["seconds"]))
    except Exception as e:  # any damage to the file is the same user-facing fact
        reason = (str(e).strip().splitlines() or [""])[0][:200]  # torch's can run to pages
        raise FlexLoraError(f"--resume: {path} is unreadable ({type(e).__name__}: {reason})") from e
    read_metrics_lines(out_dir, checkpoint.rounds_completed)  # up front, before any loading
    return checkpoint


def _check_zip_checksums(path: Path) -> None:
    """ValueError naming the first member of a torch.save zip whose CRC-32 fails: torch.load
    does not check them, and a flipped byte would otherwise resume silently on altered
    weights or settings."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"{bad} fails its checksum")


def _final_metrics(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("unseen", "seen"):
        if split in evaluation:
            out[f"{split}_rougeL"] = evaluation[split].get("rougeL")
            out[f"{split}_loss"] = evaluation[split].get("loss")
    return out
