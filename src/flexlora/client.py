"""One client's round: `local_update(host, task) -> reply`. Knows nothing of the server.

The task carries everything a client needs (its id, the round, its rank class and
per-module ranks, its start factors, a seed, the recipe and its options); the reply
carries everything it sends back (trained factors, number of examples, loss, tokens,
seconds, the ranks it keeps) or a failure and its reason. Every engine, in-process or
Flower, runs exactly this function; `train_client` is its inner loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flexlora.adapters import AdapterHost
from flexlora.config import FederationConfig
from flexlora.data.tokenize import TokenizedExample, TokenizedSplit, collate
from flexlora.lora import LoraFactors
from flexlora.methods import Regularizer, recipe_named, zero_tail

logger = logging.getLogger(__name__)


@dataclass
class ClientTask:
    """What the server sends one client for one round."""

    client_id: str
    round: int
    """The round being trained, counted from 1."""
    rank_class: str
    """The adapter (rank class) the client trains; `start` has its ranks."""
    ranks: dict[str, int]
    """Module -> the rank the client trains (below the class rank after HETLoRA pruning;
    components past it are zero and stay zero)."""
    start: dict[str, LoraFactors]
    """Module -> the factors the client starts from, at its class's ranks."""
    seed: int
    """Orders the batches and seeds dropout; derived from (run seed, round, client id)."""
    recipe: str
    """How the client trains (flexlora.methods.RECIPES)."""
    recipe_options: dict[str, Any] = field(default_factory=dict)
    sparse: dict[str, Tensor] | None = None
    """SLoRA's sparse stage: module -> the accumulated sparse update at the shared mask's
    entries (k,), which the client adds to its base weights and trains; None in a LoRA
    round (then `start` holds the factors)."""


@dataclass
class ClientReply:
    """What one client sends back: its trained factors, or why it has none."""

    client_id: str
    factors: dict[str, LoraFactors] | None
    num_examples: int
    """Local training examples: the client's aggregation weight."""
    ranks: dict[str, int] = field(default_factory=dict)
    """Module -> the rank the client keeps for the next round."""
    loss: float = math.nan
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    """Why the client has no update (training raised, the loss became non-finite, ...)."""
    sparse: dict[str, Tensor] | None = None
    """SLoRA's sparse stage: module -> the client's sparse update at the mask's entries."""

    @property
    def ok(self) -> bool:
        return self.error is None and (self.factors is not None or self.sparse is not None)


@dataclass
class ClientHost:
    """What a client process holds across rounds: the model with its rank classes'
    adapters, its clients' training data and the local training settings."""

    adapters: AdapterHost
    train_examples: Mapping[str, TokenizedSplit]
    federation: FederationConfig
    pad_id: int
    device: torch.device


def local_update(host: ClientHost, task: ClientTask) -> ClientReply:
    """Train one client for one round from the task's start factors.

    A client whose training fails (an exception, a non-finite loss or factors) answers
    with the reason instead of factors: the server leaves it out of the round.
    """
    examples = host.train_examples.get(task.client_id)
    num_examples = len(examples) if examples is not None else 0
    try:
        if not examples:
            raise ValueError("no training examples on this client")
        recipe = recipe_named(task.recipe)
        options = recipe.options(task.recipe_options)
        federation = host.federation
        if recipe.optimizer is not None:  # FedIT trains with AdamW, FedAvg with SGD
            federation = dataclasses.replace(federation, optimizer=recipe.optimizer)
        if task.sparse is not None:
            sparse, result = _train_sparse(host, task, options, examples, federation)
            return ClientReply(
                client_id=task.client_id,
                factors=None,
                num_examples=num_examples,
                loss=result.loss,
                tokens=result.tokens,
                seconds=result.seconds,
                sparse=sparse,
            )
        start = {n: zero_tail(f, task.ranks[n]) for n, f in task.start.items()}
        host.adapters.load(task.rank_class, start)
        params = host.adapters.activate(task.rank_class, freeze_A=recipe.freeze_A)
        with _seeded(task.seed, host.device):
            result = train_client(
                host.adapters.model,
                params,
                examples,
                federation,
                pad_id=host.pad_id,
                generator=torch.Generator().manual_seed(task.seed),
                device=host.device,
                regularizer=recipe.regularizer(
                    options, host.adapters.factor_pairs(task.rank_class)
                ),
            )
        trained = host.adapters.read(task.rank_class)
        factors, ranks = recipe.after_training(options, start, trained, task.ranks)
        bad = next((n for n, f in factors.items() if not _finite(f)), None)
        if bad is not None:
            raise FloatingPointError(f"the trained factors of {bad} are not finite")
    except Exception as e:  # a failing client is reported and left out, never fatal
        reason = f"{type(e).__name__}: {e}"
        logger.warning("client %s failed in round %d: %s", task.client_id, task.round, reason)
        return ClientReply(task.client_id, None, num_examples, error=reason)
    return ClientReply(
        client_id=task.client_id,
        factors=factors,
        num_examples=num_examples,
        ranks=ranks,
        loss=result.loss,
        tokens=result.tokens,
        seconds=result.seconds,
    )


def _checkpointing(model: nn.Module) -> bool:
    """Whether the model already recomputes activations (then it is left as it is)."""
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _finite(f: LoraFactors) -> bool:
    return bool(torch.isfinite(f.B).all()) and bool(torch.isfinite(f.A).all())


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Dropout draws from torch's global generator: seed it for this client only, and
    give the caller its generator state back afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _train_sparse(
    host: ClientHost,
    task: ClientTask,
    options: Any,
    examples: TokenizedSplit,
    federation: FederationConfig,
) -> tuple[dict[str, Tensor], ClientTrainResult]:
    """SLoRA's sparse stage on this client: the base weights of the target modules, at
    the shared mask's entries only, from W0 + the accumulated sparse update.

    Entries outside the mask get a zero gradient and no weight decay, so the update is
    exactly sparse; the base weights are given back as they were afterwards (one model
    serves every client in-process). Returns the client's sparse update (values at the
    mask) and the training figures.
    """
    from flexlora.slora import sparse_mask

    assert task.sparse is not None
    weights = host.adapters.base_weights()
    shapes = host.adapters.shapes
    masks = {n: sparse_mask(shapes[n], options.density, options.seed, n) for n in weights}
    originals: dict[str, Tensor] = {}
    hooks = []
    try:
        with torch.no_grad():
            for name, W in weights.items():
                idx = masks[name].to(W.device)
                flat = W.view(-1)
                originals[name] = flat[idx].clone()
                flat[idx] += task.sparse[name].to(device=W.device, dtype=W.dtype)
        for name, W in weights.items():
            keep = torch.zeros(W.numel(), dtype=W.dtype, device=W.device)
            keep[masks[name].to(W.device)] = 1
            keep = keep.view_as(W)
            W.requires_grad_(True)
            hooks.append(W.register_hook(lambda grad, keep=keep: grad * keep))
        # weight decay would move every entry, not just the mask's
        sparse_fed = dataclasses.replace(federation, weight_decay=0.0)
        with _seeded(task.seed, host.device), host.adapters.model.disable_adapter():
            result = train_client(
                host.adapters.model,
                list(weights.values()),
                examples,
                sparse_fed,
                pad_id=host.pad_id,
                generator=torch.Generator().manual_seed(task.seed),
                device=host.device,
            )
        update = {
            name: (W.detach().view(-1)[masks[name].to(W.device)] - originals[name]).float().cpu()
            for name, W in weights.items()
        }
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for name, W in weights.items():
                W.requires_grad_(False)
                if name in originals:
                    W.view(-1)[masks[name].to(W.device)] = originals[name]
    bad = next((n for n, v in update.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise FloatingPointError(f"the sparse update of {bad} is not finite")
    return update, result


@dataclass
class ClientTrainResult:
    loss: float
    """Mean training loss over the local steps (language-model loss, without the regulariser)."""
    steps: int
    examples_seen: int
    tokens: int
    """Tokens processed (input length, padding excluded), for throughput figures."""
    seconds: float


def num_local_steps(num_examples: int, fed: FederationConfig) -> int:
    """Optimizer steps for one client: local_steps, or local_epochs over its data."""
    if fed.local_steps is not None:
        return fed.local_steps
    per_step = fed.batch_size * fed.grad_accum
    return max(1, math.ceil(fed.local_epochs * num_examples / per_step))


def _batch_indices(
    n: int, batch_size: int, count: int, generator: torch.Generator
) -> list[list[int]]:
    """`count` batches drawn epoch by epoch from fresh permutations (the last batch of an
    epoch may be short: no example is seen twice before all were seen once)."""
    batches: list[list[int]] = []
    while len(batches) < count:
        order = torch.randperm(n, generator=generator).tolist()
        batches.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:count]


def _schedule(kind: str, total: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    if kind == "linear":
        return lambda step: 1 - step / total
    return lambda step: 1.0


def make_optimizer(params: list[nn.Parameter], fed: FederationConfig) -> torch.optim.Optimizer:
    """AdamW (FedIT, as the authors trained) or plain SGD (FedAvg); fresh every round."""
    lr = _step_size(fed)[0]
    if fed.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=fed.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=fed.weight_decay)


def _step_size(fed: FederationConfig) -> tuple[float, str]:
    """The optimiser's step size and the config key that set it (SGD's own, when given)."""
    if fed.optimizer == "sgd" and fed.sgd_lr is not None:
        return fed.sgd_lr, "federation.sgd_lr"
    return fed.lr, "federation.lr"


def train_client(
    model: nn.Module,
    params: list[nn.Parameter],
    examples: Sequence[TokenizedExample] | TokenizedSplit,
    fed: FederationConfig,
    *,
    pad_id: int,
    generator: torch.Generator,
    device: torch.device,
    regularizer: Regularizer | None = None,
) -> ClientTrainResult:
    """Train `params` of `model` on `examples` for the configured local steps.

    `generator` orders the batches. Dropout draws from torch's global generator: the
    engine runs this inside `torch.random.fork_rng` seeded per client and round, so a
    run is deterministic without touching the caller's global state.
    """
    if not examples:
        raise ValueError("a client with no training examples cannot train")
    steps = num_local_steps(len(examples), fed)
    optimizer = make_optimizer(params, fed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(fed.lr_schedule, steps))
    batches = _batch_indices(len(examples), fed.batch_size, steps * fed.grad_accum, generator)

    was_training = model.training
    model.train()
    hf_model: Any = model  # a transformers (or peft) model: its checkpointing switches
    checkpointing = fed.gradient_checkpointing and not _checkpointing(model)
    if checkpointing:
        # non-reentrant: no input needs requires_grad, and dropout's draws are replayed
        hf_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=fed.autocast == "bfloat16"
    )
    start = time.perf_counter()
    # The losses stay on the device and are read once at the end: a read per micro-batch
    # would make the host wait for the device every time. A non-finite loss poisons the
    # sum, so one check at the end still catches it (and the factors are checked too).
    step_losses = torch.zeros(steps, device=device)
    tokens, seen = 0, 0
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for micro in batches[step * fed.grad_accum : (step + 1) * fed.grad_accum]:
            cpu_batch = collate([examples[i] for i in micro], pad_id)
            tokens += int(cpu_batch["attention_mask"].sum())  # counted on the CPU: no sync
            batch = {k: v.to(device) for k, v in cpu_batch.items()}
            with autocast:
                loss = model(**batch).loss
            step_losses[step] += loss.detach().float() / fed.grad_accum
            if regularizer is not None:
                loss = loss + regularizer()
            (loss / fed.grad_accum).backward()
            seen += len(micro)
        if fed.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, fed.max_grad_norm)
        optimizer.step()
        scheduler.step()
    model.train(was_training)
    if checkpointing:
        hf_model.gradient_checkpointing_disable()
    losses = step_losses.cpu()
    if not bool(torch.isfinite(losses).all()):
        first = int((~torch.isfinite(losses)).nonzero()[0])
        raise FloatingPointError(
            f"the training loss became {float(losses[first])} at local step {first + 1} of "
            f"{steps} (lower {_step_size(fed)[1]} or set federation.max_grad_norm)"
        )
    return ClientTrainResult(
        loss=float(losses.mean()),
        steps=steps,
        examples_seen=seen,
        tokens=tokens,
        seconds=time.perf_counter() - start,
    )
