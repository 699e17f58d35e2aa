"""The ClientApp: flexlora's client step, `client.local_update`, behind a Flower message.

Two kinds of node:
- a simulation worker (no node config): it loads the run's whole dataset once and
  trains whichever client a task names;
- a deployment node (node config `client-id`, `data-path`, and `rank-type` or
  `max-rank`): one client with its own data, which answers the server's query with its
  id, its number of examples and the capacity it declares, and trains only itself.
Either keeps one model for the run and folds into its base the updates the server has
folded into its own (FLoRA, FedEx-LoRA), in the same order, so its base equals the
server's bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flexlora.errors import FlexLoraError

# Flower 1.42 starts a new ClientApp process for every message: the profile query must
# not pay for torch, peft and transformers, so the training path imports them itself.
if TYPE_CHECKING:
    from flexlora.client import ClientHost
    from flexlora.config import ExperimentConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeProfile:
    """What a deployment node declares: who it is, where its data is, what it can hold."""

    client_id: str
    data_path: Path
    rank_type: int | None
    """Index (from 0) of the rank type it trains, or None when it gives max_rank."""
    max_rank: int | None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeProfile | None:
        """The profile in a SuperNode's node config, or None for a simulation worker."""
        if "client-id" not in node_config:
            return None
        if "data-path" not in node_config:
            raise FlexLoraError("node config: client-id given without data-path")
        rank_type, max_rank = node_config.get("rank-type"), node_config.get("max-rank")
        if (rank_type is None) == (max_rank is None):
            raise FlexLoraError("node config: give exactly one of rank-type and max-rank")
        return cls(
            client_id=str(node_config["client-id"]),
            data_path=Path(str(node_config["data-path"])).expanduser().resolve(),
            rank_type=None if rank_type is None else int(rank_type),
            max_rank=None if max_rank is None else int(max_rank),
        )


@dataclass
class _NodeModel:
    key: str
    host: ClientHost
    folded: int
    """How many of the server's base updates this model holds."""


_MODEL: _NodeModel | None = None  # one run per ClientApp process


def _node_model(cfg: ExperimentConfig, profile: NodeProfile | None) -> _NodeModel:
    """This process's model for `cfg`, loaded once (again only if the run changes)."""
    from flexlora.config import config_to_dict

    global _MODEL
    key = json.dumps([config_to_dict(cfg), str(profile)], sort_keys=True, default=str)
    if _MODEL is None or _MODEL.key != key:
        host = _simulation_host(cfg) if profile is None else _deployment_host(cfg, profile)
        _MODEL = _NodeModel(key, host, 0)
    return _MODEL


def _simulation_host(cfg: ExperimentConfig) -> ClientHost:
    from flexlora.experiment import prepare_experiment

    return prepare_experiment(cfg).engine.client


def _deployment_host(cfg: ExperimentConfig, profile: NodeProfile) -> ClientHost:
    """The model with every rank class's adapter, and this node's own examples."""
    from flexlora.adapters import AdapterHost, target_module_shapes
    from flexlora.client import ClientHost
    from flexlora.data.sources.records import load_file_pool
    from flexlora.data.tokenize import tokenize_examples
    from flexlora.experiment import load_model_and_tokenizer, pick_device
    from flexlora.rounds import build_rank_classes

    device = pick_device(cfg.model.device)
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    shapes = target_module_shapes(model, cfg.model.target_modules)
    classes, _ = build_rank_classes(cfg.ranks.types, shapes)
    adapters = AdapterHost(
        model, cfg.model.target_modules, cfg.lora, {c.key: c.ranks for c in classes}
    )
    examples = load_file_pool(profile.data_path, cfg.data.field_map).examples
    tokenized = tokenize_examples(examples, tokenizer, cfg.data)
    logger.info("node %s: %d training examples", profile.client_id, len(tokenized))
    return ClientHost(
        adapters=adapters,
        train_examples={profile.client_id: tokenized},
        federation=cfg.federation,
        pad_id=int(tokenizer.pad_token_id),
        device=device,
    )


def train(message: Message, cfg: ExperimentConfig, profile: NodeProfile | None = None) -> Message:
    """Answer one training task."""
    from flexlora.client import ClientReply, local_update
    from flexlora.flower.payload import decode_task, encode_reply

    global _MODEL
    task, base = decode_task(message.content)
    dtype = cfg.flower.transport_dtype
    if profile is not None and task.client_id != profile.client_id:
        wrong = ClientReply(
            task.client_id, None, 0, error=f"sent to node {profile.client_id}, not to it"
        )
        return Message(encode_reply(wrong, dtype), reply_to=message)
    node = _node_model(cfg, profile)
    if len(base) < node.folded:  # the server went back (a resumed run): start over
        _MODEL = None
        node = _node_model(cfg, profile)
    for update in base[node.folded :]:
        node.host.adapters.merge_into_base(update)
    node.folded = len(base)
    reply = local_update(node.host, task)
    return Message(encode_reply(reply, dtype), reply_to=message)


def profile_reply(message: Message, profile: NodeProfile | None) -> Message:
    """The node's declared profile, for the server's first query."""
    if profile is None:
        raise FlexLoraError("this SuperNode has no client-id in its node config")
    record = ConfigRecord(
        {
            "client_id": profile.client_id,
            "rank_type": -1 if profile.rank_type is None else profile.rank_type,
            "max_rank": -1 if profile.max_rank is None else profile.max_rank,
        }
    )
    return Message(RecordDict({"profile": record}), reply_to=message)


def make_client_app(cfg: ExperimentConfig) -> ClientApp:
    """A ClientApp bound to `cfg` (the Simulation Engine started by `flexlora run`)."""
    client_app = ClientApp()

    @client_app.train()
    def _train(message: Message, context: Context) -> Message:
        return train(message, cfg)

    return client_app


app = ClientApp()


@app.train()
def _train_from_run_config(message: Message, context: Context) -> Message:
    """`flwr run`: the run's config comes from its run config, the node's from its own."""
    from flexlora.flower.run_config import config_from_run_config

    profile = NodeProfile.from_node_config(context.node_config)
    return train(message, config_from_run_config(context.run_config), profile)


@app.query()
def _query(message: Message, context: Context) -> Message:
    return profile_reply(message, NodeProfile.from_node_config(context.node_config))
