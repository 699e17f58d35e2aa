"""One experiment from a config: load model and data, run the rounds, write the results.

The loop itself reads top to bottom in `run_experiment`; the pieces live in
flexlora.simulation (the engine) and flexlora.outputs (what a run leaves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexlora.adapters import AdapterHost, target_module_shapes
from flexlora.assets import resolve_model_path
from flexlora.client import ClientHost
from flexlora.config import ExperimentConfig
from flexlora.data.dataset import load_federated_dataset
from flexlora.data.tokenize import TokenizedCache
from flexlora.errors import FlexLoraError
from flexlora.evaluate import count_examples, evaluate_clients
from flexlora.outputs import Checkpoint, RunWriter
from flexlora.rounds import (
    Server,
    ServerState,
    build_rank_classes,
    initial_state,
    total_update,
)
from flexlora.simulation import Engine, InProcessEngine, RunObserver

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlexLoraError(f"model.device={name} but no CUDA device is available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model_and_tokenizer(cfg: ExperimentConfig, device: torch.device) -> tuple[Any, Any]:
    """transformers AutoModelForCausalLM + AutoTokenizer from a local path or hub id."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.model.path)
    dtype = pick_dtype(cfg.model.dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as e:  # missing, unreadable or cut short
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlexLoraError(f"cannot load model {cfg.model.path}: {first}") from e
    if tokenizer.pad_token_id is None:
        # Models such as stories260K ship no pad token: unk (or eos) pads, masked anyway.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise FlexLoraError(f"the tokenizer of {cfg.model.path} has no EOS token")
    model.to(device)  # type: ignore[arg-type]  # transformers' decorated .to confuses mypy
    model.requires_grad_(False)  # W0 stays frozen: only LoRA factors train
    return model, tokenizer


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Checks that need no model or data: method, its options, rank types, distribution."""
    from flexlora.methods import get_federated_method
    from flexlora.ranks import distribution_probabilities

    method = get_federated_method(cfg.method)
    method.resolve_options(cfg.method_options, cfg.recipe_options, cfg.seed)
    distribution_probabilities(cfg.ranks.distribution, len(cfg.ranks.types))
    if method.single_rank and len({str(t) for t in cfg.ranks.types}) > 1:
        raise FlexLoraError(
            f"method {method.name} trains one homogeneous rank: give a single rank type "
            "(e.g. --set 'ranks.types=[8]')"
        )


@dataclass
class ExperimentResult:
    out_dir: Path
    summary: dict[str, Any]


@dataclass
class PreparedExperiment:
    """A run's fixed parts, loaded and checked; nothing has been written yet."""

    engine: InProcessEngine
    tokenizer: Any
    shapes: dict[str, tuple[int, int]]
    tokenized_counts: Mapping[str, Any]

    @property
    def server(self) -> Server:
        return self.engine.server


def prepare_experiment(cfg: ExperimentConfig) -> PreparedExperiment:
    """Validate `cfg`, load data and model, tokenise, and build the engine's pieces.

    Everything that can reject the user's input happens here, before anything is written.
    """
    device = pick_device(cfg.model.device)
    validate_experiment(cfg)
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    if not dataset.seen:
        raise FlexLoraError("no seen clients left to train on after holding out the unseen ones")
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    shapes = target_module_shapes(model, cfg.model.target_modules)
    build_rank_classes(cfg.ranks.types, shapes)  # rank types checked before tokenising
    tokenized = TokenizedCache(cfg.data.cache_dir).load_or_tokenize(dataset, tokenizer, cfg.data)
    train_examples = {cid: tokenized.split(cid, "train") for cid in dataset.seen}
    # A client whose every example lost its target to max_length cannot train: it stays
    # out of sampling, counted in the summary and logged (never dropped silently).
    empty = sorted(cid for cid, exs in train_examples.items() if len(exs) == 0)
    if empty:
        logger.warning(
            "%d clients have no training example within data.max_length=%d and will not be "
            "sampled (first: %s)",
            len(empty),
            cfg.data.max_length,
            ", ".join(empty[:5]),
        )
        for cid in empty:
            del dataset.seen[cid], train_examples[cid]
        dataset.skipped["clients_without_train_examples"] = len(empty)
        if not dataset.seen:
            raise FlexLoraError(
                f"no client has a training example within data.max_length={cfg.data.max_length}"
            )

    server = Server.build(cfg, shapes, list(dataset.seen))
    host = AdapterHost(
        model, cfg.model.target_modules, cfg.lora, {c.key: c.ranks for c in server.classes}
    )

    def evaluate(
        model: Any, split: str, clients: Mapping[str, Any], obs: RunObserver
    ) -> dict[str, Any]:
        total = count_examples(clients, split, cfg.eval)  # type: ignore[arg-type]
        obs.eval_started(f"{split}:{len(clients)} clients", total)
        result = evaluate_clients(
            model,
            tokenizer,
            clients,
            split,  # type: ignore[arg-type]  # 'eval' or 'test', from the engine
            cfg.data,
            cfg.eval,
            device=device,
            progress=obs.eval_progress,
        )
        return result.to_dict()

    engine = InProcessEngine(
        server=server,
        client=ClientHost(
            adapters=host,
            train_examples=train_examples,
            federation=cfg.federation,
            pad_id=int(tokenizer.pad_token_id),
            device=device,
        ),
        dataset=dataset,
        evaluate=evaluate,
    )
    return PreparedExperiment(engine, tokenizer, shapes, tokenized.counts)


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: Path,
    observer: RunObserver | None = None,
    checkpoint: Checkpoint | None = None,
) -> ExperimentResult:
    """Run `cfg` end to end on its engine and leave its results under `out_dir`.

    After every round the server state is saved to `out_dir/checkpoint.pt`. Given that
    `checkpoint` (read back with `read_checkpoint`), the run goes on from the round after
    it and ends exactly as an uninterrupted run would: every random draw of a round is
    seeded from (seed, round, client id), never from state carried in memory.
    """
    observer = observer or RunObserver()
    if cfg.engine == "flower":
        from flexlora.flower.simulation import run_on_simulation_engine

        validate_experiment(cfg)  # before Flower starts: a bad config costs nothing
        return run_on_simulation_engine(cfg, out_dir, observer, checkpoint)
    started = time.perf_counter()
    prepared = prepare_experiment(cfg)
    return drive_rounds(prepared, prepared.engine, out_dir, observer, checkpoint, started)


def drive_rounds(
    prepared: PreparedExperiment,
    engine: Engine,
    out_dir: Path,
    observer: RunObserver,
    checkpoint: Checkpoint | None,
    started: float,
) -> ExperimentResult:
    """The run's loop, the same for every engine: start (or resume), score the base
    model, run and checkpoint each round, write the results."""
    cfg = engine.server.config
    state = initial_state(engine.server)
    seconds_before = 0.0
    if checkpoint is not None:
        state = resume_state(checkpoint, state, engine.client.adapters)
        seconds_before = checkpoint.seconds
        logger.info("resuming after round %d of %d", state.round, cfg.federation.rounds)
    writer = RunWriter(out_dir, cfg)
    writer.start(
        dataset=engine.dataset,
        classes=engine.server.classes,
        client_class=state.client_class,
        tokenized_stats=prepared.tokenized_counts,
        resumed_rounds=state.round,
    )
    if state.round == 0:
        # A checkpoint before any work: a run stopped before its first round ends can
        # still be resumed (from round 1) instead of leaving a folder nothing accepts.
        writer.checkpoint(state, seconds_before + time.perf_counter() - started)
    if cfg.eval.baseline and state.round == 0:
        state.baseline = engine.evaluate_global(state, observer)  # W0: no update yet
    while state.round < cfg.federation.rounds:
        state, record = engine.run_round(state, observer)
        writer.append_round(record)
        writer.checkpoint(state, seconds_before + time.perf_counter() - started)
    summary = writer.finish(
        state=state,
        total_update=total_update(state, prepared.shapes),
        tokenizer=prepared.tokenizer,
        seconds_total=seconds_before + time.perf_counter() - started,
    )
    return ExperimentResult(out_dir=out_dir, summary=summary)


def resume_state(checkpoint: Checkpoint, fresh: ServerState, host: AdapterHost) -> ServerState:
    """The checkpoint's server state, checked against a fresh start of the same run.

    The rank assignment is drawn from the seed, so a fresh start must draw the same one:
    a difference means the data changed since the run began. Updates FLoRA had merged
    into the base weights are merged again, in their order, into the freshly loaded model.
    """
    state = ServerState.from_state_dict(checkpoint.state)
    if state.client_class != fresh.client_class:
        raise FlexLoraError(
            "--resume: the clients differ from those the run started with "
            "(the data or the tokenizer changed since)"
        )
    for update in state.merged:
        host.merge_into_base(update)
    return state
