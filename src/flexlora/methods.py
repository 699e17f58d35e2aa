"""Federated methods as objects: the one registry the engines ask.

A method pairs the server's aggregation (a pure function from flexlora.aggregation) with
what it needs from a client's round: whether A is frozen, how the start factors' A is
drawn, a regulariser added to the local loss, and a step after training (HETLoRA's rank
self-pruning). Engines read these capabilities and hooks; they never compare names.

Every hook is called with the method's parsed options, so a client that knows only the
task it was sent (the method's name and its options) runs the same code as the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flexlora.aggregation import get_aggregation
from flexlora.aggregation.base import AggregateFn
from flexlora.aggregation.common import parse_options, stable_seed
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors

# The live (B, A) parameters of every module of the training adapter.
FactorPairs = Mapping[str, tuple[Tensor, Tensor]]
# A scalar added to the local loss, over the live factors.
Regularizer = Callable[[], Tensor]


@dataclass(frozen=True)
class Method:
    """A method with nothing to add on the client: plain local LoRA training."""

    name: str
    single_rank: bool = False
    """Every client must train one and the same rank (the aggregation averages factors)."""
    freeze_A: bool = False
    """Clients train B only; A stays at the shared start (FFA-LoRA)."""

    @property
    def aggregate(self) -> AggregateFn:
        return get_aggregation(self.name).aggregate

    def options(self, raw: Mapping[str, Any]) -> Any:
        """The method's options dataclass from a plain mapping (FlexLoraError if bad)."""
        return parse_options(get_aggregation(self.name).options, raw, self.name)

    def resolve_options(self, raw: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
        """The plain options a run hands to the aggregation and to every client: the
        user's, plus any the method derives from the run's seed."""
        self.options(raw)  # validate now, before anything runs
        return dict(raw)

    def initial_A(
        self, shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], options: Any
    ) -> dict[str, Tensor] | None:
        """Module -> A (rank, in) every client must start from, or None for PEFT's draw."""
        return None

    def regularizer(self, options: Any, pairs: FactorPairs) -> Regularizer | None:
        """A term added to the local loss, or None."""
        return None

    def after_training(
        self,
        options: Any,
        start: Mapping[str, LoraFactors],
        trained: dict[str, LoraFactors],
        ranks: Mapping[str, int],
    ) -> tuple[dict[str, LoraFactors], dict[str, int]]:
        """(factors to send, ranks the client keeps) after local training."""
        return trained, dict(ranks)


@dataclass(frozen=True)
class FfaMethod(Method):
    """FFA-LoRA: A frozen at a shared seeded draw, only B trains and is averaged."""

    def resolve_options(self, raw: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
        # Every A is drawn with ffa_shared_A from this seed, and the aggregation is told it:
        # a class above the largest rank sampled in a round then gets its further shared
        # rows regenerated, not zero rows it could never train (A is frozen).
        resolved = dict(raw)
        resolved.setdefault("seed", stable_seed("ffa-shared-A", run_seed))
        self.options(resolved)
        return resolved

    def initial_A(
        self, shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], options: Any
    ) -> dict[str, Tensor] | None:
        from flexlora.aggregation.ffa import ffa_shared_A

        return {n: ffa_shared_A(shapes[n][1], ranks[n], options.seed, n) for n in sorted(shapes)}


@dataclass(frozen=True)
class HetLoraMethod(Method):
    """HETLoRA: a tail-norm regulariser in the local loss, then rank self-pruning.

    Both run only with reg_lambda > 0; with 0 the method is zero-padding with its
    sparsity weights on the server.
    """

    def regularizer(self, options: Any, pairs: FactorPairs) -> Regularizer | None:
        from flexlora.aggregation.hetlora import hetlora_regularizer

        if options.reg_lambda == 0:
            return None

        def regularizer() -> Tensor:
            terms = [hetlora_regularizer(B, A, options.gamma) for B, A in pairs.values()]
            return options.reg_lambda * torch.stack(terms).sum()

        return regularizer

    def after_training(
        self,
        options: Any,
        start: Mapping[str, LoraFactors],
        trained: dict[str, LoraFactors],
        ranks: Mapping[str, int],
    ) -> tuple[dict[str, LoraFactors], dict[str, int]]:
        """A module drops to ⌊γ r⌋ when local training shrank its tail (the regulariser
        won); its pruned components are sent as zeros."""
        from flexlora.aggregation.hetlora import hetlora_prune_rank, pruned_rank

        if options.reg_lambda == 0:
            return trained, dict(ranks)
        kept: dict[str, int] = {}
        out: dict[str, LoraFactors] = {}
        for name, f in trained.items():
            current = ranks[name]
            keep = max(options.min_rank, pruned_rank(current, options.gamma))
            s0 = start[name]
            # (out, r - keep) and (r - keep, in): the tail the regulariser pushes down
            before = float(s0.B[:, keep:current].norm() * s0.A[keep:current].norm())
            kept[name] = hetlora_prune_rank(
                f.B, f.A, options.gamma, current, options.min_rank, before
            )
            out[name] = zero_tail(f, kept[name])
        return out, kept


def zero_tail(f: LoraFactors, rank: int) -> LoraFactors:
    """The same factors with components from `rank` on set to zero (shape unchanged)."""
    if rank >= f.rank:
        return f
    B, A = f.B.clone(), f.A.clone()
    B[:, rank:] = 0
    A[rank:] = 0
    return LoraFactors(B=B, A=A, scaling=f.scaling)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("flexlora"),
        Method("fedit", single_rank=True),
        Method("zeropad"),
        HetLoraMethod("hetlora"),
        Method("flora"),
        FfaMethod("ffa", freeze_A=True),
        Method("florist"),
        Method("fedex", single_rank=True),
    )
}


def get_federated_method(name: str) -> Method:
    """The method called `name`; FlexLoraError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise FlexLoraError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None
