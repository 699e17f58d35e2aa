"""Federated methods as objects: a client-side recipe paired with a server-side aggregation.

The paper plugs FlexLoRA into existing recipes ("FedIT + FlexLoRA", "SLoRA + FlexLoRA"),
so a method is two parts chosen apart:
- a **recipe** (this module): how a client trains its round — the local optimiser
  (FedIT: AdamW; FedAvg: SGD), HETLoRA's regulariser and rank self-pruning, FFA-LoRA's
  frozen shared A, SLoRA's sparse first stage (AdamW, as the authors ran it);
- an **aggregation** (flexlora.aggregation): how the server combines the replies —
  homogeneous averaging, zero-padding, HETLoRA's weights, FlexLoRA, FLoRA, FLoRIST,
  FedEx-LoRA.

`method: RECIPE+AGGREGATION` (e.g. `slora+flexlora`, `fedavg+zeropad`) names a pair; a
single name is a method as its paper runs it (`flexlora`: the local optimiser of
`federation.optimizer`, AdamW by default, with FlexLoRA's aggregation; `hetlora`: the
HETLoRA recipe with HETLoRA's aggregation; `ffa`: FFA-LoRA's). Engines read the
objects' capabilities and hooks; they never compare names. The recipe's hooks are
called with its parsed options, so a client that knows only its task (the recipe's name
and options) runs the same code as the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from flexlora.aggregation import Aggregation, get_aggregation
from flexlora.aggregation.common import parse_options, stable_seed
from flexlora.aggregation.hetlora import HetLoraClientOptions
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors

# The live (B, A) parameters of every module of the training adapter.
FactorPairs = Mapping[str, tuple[Tensor, Tensor]]
# A scalar added to the local loss, over the live factors.
Regularizer = Callable[[], Tensor]


@dataclass(frozen=True)
class NoOptions:
    """A recipe without options."""


@dataclass(frozen=True)
class FfaRecipeOptions:
    """FFA-LoRA's client side (Sun et al., ICLR 2024)."""

    seed: int | None = None
    """The seed of the shared frozen A (`ffa_shared_A`); None: derived from the run seed."""


@dataclass(frozen=True)
class SloraOptions:
    """SLoRA's client side (Babakniya et al., 2023; flexlora.slora says what differs from
    the FlexLoRA authors' code)."""

    sparse_rounds: int = 5
    """Rounds of the sparse stage, counted in federation.rounds (the authors' R_1 = 5)."""
    density: float = 0.01
    """Share of each target module's entries the shared mask trains (the authors drew
    0.12% for their homogeneous runs, 2.5–12% per rank type otherwise)."""
    seed: int | None = None
    """The mask's seed; None: derived from the run seed."""

    def __post_init__(self) -> None:
        if self.sparse_rounds < 1:
            raise FlexLoraError(f"slora: sparse_rounds must be >= 1, got {self.sparse_rounds}")
        if not (0.0 < self.density <= 1.0):
            raise FlexLoraError(f"slora: density must be in (0, 1], got {self.density}")


@dataclass(frozen=True)
class Recipe:
    """A client's round: local LoRA training with this optimiser and nothing more."""

    name: str
    optimizer: Literal["adamw", "sgd"] | None = None
    """The local optimiser; None: federation.optimizer."""
    freeze_A: bool = False
    """Clients train B only; A stays at the shared start (FFA-LoRA)."""
    options_type: type = NoOptions

    def options(self, raw: Mapping[str, Any]) -> Any:
        """The recipe's options dataclass from a plain mapping (FlexLoraError if bad)."""
        return parse_options(self.options_type, raw, f"recipe {self.name}")

    def resolve_options(self, raw: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
        """The plain options every client gets: the user's, plus any derived from the
        run's seed."""
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

    def sparse_rounds(self, options: Any) -> int:
        """Rounds of a sparse first stage before LoRA (SLoRA); 0 for none."""
        return 0


@dataclass(frozen=True)
class SloraRecipe(Recipe):
    """SLoRA: a sparse stage on the full weights (one shared random mask), then LoRA
    from the SVD of the accumulated sparse update (flexlora.slora)."""

    def resolve_options(self, raw: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
        resolved = dict(raw)
        if resolved.get("seed") is None:
            resolved["seed"] = stable_seed("slora-mask-seed", run_seed)
        self.options(resolved)
        return resolved

    def sparse_rounds(self, options: Any) -> int:
        return int(options.sparse_rounds)


@dataclass(frozen=True)
class FfaRecipe(Recipe):
    """FFA-LoRA: A frozen at a shared seeded draw, only B trains."""

    def resolve_options(self, raw: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
        # Every A is drawn with ffa_shared_A from this seed, and the aggregation is told it:
        # a class above the largest rank sampled in a round then gets its further shared
        # rows regenerated, not zero rows it could never train (A is frozen).
        resolved = dict(raw)
        if resolved.get("seed") is None:
            resolved["seed"] = stable_seed("ffa-shared-A", run_seed)
        self.options(resolved)
        return resolved

    def initial_A(
        self, shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], options: Any
    ) -> dict[str, Tensor] | None:
        from flexlora.aggregation.ffa import ffa_shared_A

        return {n: ffa_shared_A(shapes[n][1], ranks[n], options.seed, n) for n in sorted(shapes)}


@dataclass(frozen=True)
class HetLoraRecipe(Recipe):
    """HETLoRA: a tail-norm regulariser in the local loss, then rank self-pruning.

    Both run only with reg_lambda > 0; with 0 the recipe is plain local training.
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


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("local"),  # federation.optimizer: what a single method name trains with
        Recipe("fedit", optimizer="adamw"),
        Recipe("fedavg", optimizer="sgd"),
        HetLoraRecipe("hetlora", options_type=HetLoraClientOptions),
        FfaRecipe("ffa", freeze_A=True, options_type=FfaRecipeOptions),
        SloraRecipe("slora", optimizer="adamw", options_type=SloraOptions),
    )
}

# A single method name: the recipe its paper runs it with.
NAMED: dict[str, str] = {
    "flexlora": "local",
    "fedit": "local",
    "zeropad": "local",
    "hetlora": "hetlora",
    "flora": "local",
    "ffa": "ffa",
    "florist": "local",
    "fedex": "local",
}


@dataclass(frozen=True)
class Method:
    """A recipe and an aggregation, checked to work together."""

    name: str
    recipe: Recipe
    aggregation: Aggregation
    shared_options: bool
    """A single method name: one `method_options` mapping feeds both parts."""

    @property
    def single_rank(self) -> bool:
        """Every client must train one and the same rank."""
        return self.aggregation.single_rank

    def resolve_options(
        self,
        method_options: Mapping[str, Any],
        recipe_options: Mapping[str, Mapping[str, Any]],
        seed: int,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(recipe options, aggregation options) as a run hands them out, validated.

        `recipe_options` maps a recipe's name to its options, so one config (a compare
        grid) can hold every recipe's. With a single method name the recipe takes its
        own keys from `method_options` instead (HETLoRA's gamma, FFA's seed), which the
        aggregation's options class accepts too.
        """
        unknown = sorted(set(recipe_options) - set(RECIPES))
        if unknown:
            raise FlexLoraError(
                f"recipe_options.{unknown[0]}: not a recipe (known: {', '.join(sorted(RECIPES))})"
            )
        if self.shared_options:
            if self.recipe.name in recipe_options:
                raise FlexLoraError(
                    f"recipe_options.{self.recipe.name}: method {self.name} takes its "
                    "options in method_options"
                )
            fields = {f.name for f in dataclasses.fields(self.recipe.options_type)}
            own = {k: v for k, v in method_options.items() if k in fields}
        else:
            own = dict(recipe_options.get(self.recipe.name, {}))
        recipe = self.recipe.resolve_options(own, seed)
        aggregation = dict(method_options)
        if self.aggregation.shared_A:  # the aggregation regenerates A from the recipe's seed
            aggregation["seed"] = recipe["seed"]
        parse_options(self.aggregation.options, aggregation, self.aggregation.name)
        return recipe, aggregation


def get_federated_method(name: str) -> Method:
    """`RECIPE+AGGREGATION` or a single method name; FlexLoraError for an unknown part or
    a pair that cannot work together, saying why."""
    if "+" in name:
        recipe_name, _, aggregation_name = name.partition("+")
        shared = False
    elif name in NAMED:
        recipe_name, aggregation_name, shared = NAMED[name], name, True
    else:
        raise FlexLoraError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(NAMED))}, or "
            f"RECIPE+AGGREGATION with a recipe of {', '.join(sorted(RECIPES))}"
        )
    if recipe_name not in RECIPES:
        raise FlexLoraError(
            f"method {name}: unknown recipe {recipe_name!r} (known: {', '.join(sorted(RECIPES))})"
        )
    recipe = RECIPES[recipe_name]
    aggregation = get_aggregation(aggregation_name)
    if aggregation.shared_A and not recipe.freeze_A:
        raise FlexLoraError(
            f"method {name}: the {aggregation.name} aggregation averages B over an A every "
            "client keeps frozen; pair it with the ffa recipe"
        )
    if recipe.freeze_A and not aggregation.shared_A:
        raise FlexLoraError(
            f"method {name}: the {recipe.name} recipe freezes A, but the {aggregation.name} "
            "aggregation hands clients a new A each round; pair it with the ffa aggregation"
        )
    return Method(name, recipe, aggregation, shared)


def recipe_named(name: str) -> Recipe:
    """A recipe by name (what a client's task carries)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise FlexLoraError(f"unknown recipe {name!r}") from None
