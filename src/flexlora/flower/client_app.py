"""The ClientApp: flexlora's client step, `client.local_update`, behind a Flower message.

A node keeps one model for the run (loaded on its first message, with the run's data)
and folds into its base the updates the server has folded into its own (FLoRA,
FedEx-LoRA), in the same order, so its base equals the server's bit for bit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flexlora.client import ClientHost, local_update
from flexlora.config import ExperimentConfig, config_to_dict
from flexlora.flower.payload import decode_task, encode_reply
from flexlora.flower.run_config import config_from_run_config

logger = logging.getLogger(__name__)


@dataclass
class _NodeModel:
    key: str
    host: ClientHost
    folded: int
    """How many of the server's base updates this model holds."""


_MODEL: _NodeModel | None = None  # one run per ClientApp process


def _node_model(cfg: ExperimentConfig) -> _NodeModel:
    """This process's model for `cfg`, loaded once (again only if the run changes)."""
    global _MODEL
    key = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    if _MODEL is None or _MODEL.key != key:
        from flexlora.experiment import prepare_experiment

        prepared = prepare_experiment(cfg)
        _MODEL = _NodeModel(key, prepared.engine.client, 0)
    return _MODEL


def train(message: Message, cfg: ExperimentConfig) -> Message:
    """Answer one training task."""
    global _MODEL
    task, base = decode_task(message.content)
    node = _node_model(cfg)
    if len(base) < node.folded:  # the server went back (a resumed run): start over
        _MODEL = None
        node = _node_model(cfg)
    for update in base[node.folded :]:
        node.host.adapters.merge_into_base(update)
    node.folded = len(base)
    reply = local_update(node.host, task)
    return Message(encode_reply(reply, cfg.flower.transport_dtype), reply_to=message)


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
    """`flwr run`: the run's config comes from its run config."""
    return train(message, config_from_run_config(context.run_config))
