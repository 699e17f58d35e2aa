"""Local training of one client: knows nothing of federation.

The engine activates the client's adapter, loads the factors the server handed its rank
class, and calls `train_client`; what comes back is the loss and the work done. The
trained factors are read from the adapter afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flexlora.config import FederationConfig
from flexlora.data.tokenize import TokenizedExample, TokenizedSplit, collate

# A regulariser over the live (B, A) parameters of every module -> a scalar added to the loss.
Regularizer = Callable[[], Tensor]


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
    if fed.optimizer == "sgd":
        return torch.optim.SGD(params, lr=fed.lr, weight_decay=fed.weight_decay)
    return torch.optim.AdamW(params, lr=fed.lr, weight_decay=fed.weight_decay)


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
    start = time.perf_counter()
    total_loss, tokens, seen = 0.0, 0, 0
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in batches[step * fed.grad_accum : (step + 1) * fed.grad_accum]:
            cpu_batch = collate([examples[i] for i in micro], pad_id)
            tokens += int(cpu_batch["attention_mask"].sum())  # counted on the CPU: no GPU sync
            batch = {k: v.to(device) for k, v in cpu_batch.items()}
            loss = model(**batch).loss
            step_loss += float(loss.detach()) / fed.grad_accum
            if regularizer is not None:
                loss = loss + regularizer()
            (loss / fed.grad_accum).backward()
            seen += len(micro)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at local step {step}")
        if fed.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, fed.max_grad_norm)
        optimizer.step()
        scheduler.step()
        total_loss += step_loss
    model.train(was_training)
    return ClientTrainResult(
        loss=total_loss / steps,
        steps=steps,
        examples_seen=seen,
        tokens=tokens,
        seconds=time.perf_counter() - start,
    )
