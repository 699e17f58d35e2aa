"""One base model in memory, one PEFT LoRA adapter per rank class, factors swapped in.

Clients of the same rank class share one adapter: before a client trains, the engine
copies the factors the server handed its class into that adapter. So 1,600 clients cost
no more model memory than 16, and no client ever gets a copy of the model.

Module names are the base model's (e.g. "model.layers.0.self_attn.q_proj"), the same
names flexlora.peft_io uses for adapter files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from flexlora.aggregation.base import GlobalUpdate
from flexlora.config import LoraSettings
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling, peft_default_A

logger = logging.getLogger(__name__)

GLOBAL_ADAPTER = "global"
# PEFT wraps the base model twice: PeftModel.base_model (LoraModel).model (the base).
_PEFT_PREFIX = "base_model.model."


def target_module_shapes(model: nn.Module, target_modules: list[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of every nn.Linear whose last name part is one of `target_modules`."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
            shapes[name] = (module.out_features, module.in_features)
    if not shapes:
        raise FlexLoraError(f"the model has no linear layer named any of {target_modules}")
    found = {n.rsplit(".", 1)[-1] for n in shapes}
    missing = sorted(set(target_modules) - found)
    if missing:
        raise FlexLoraError(
            f"the model has no linear layer named {missing[0]} (model.target_modules)"
        )
    return shapes


def initial_factors(
    shapes: Mapping[str, tuple[int, int]],
    ranks: Mapping[str, int],
    scalings: Mapping[str, float],
    generator: torch.Generator,
) -> dict[str, LoraFactors]:
    """PEFT's default initialisation from an explicit generator: A ~ U(±1/√in), B = 0.

    kaiming_uniform_(a=√5), PEFT's default for A, is exactly U(-1/√in, 1/√in); B = 0 makes
    every client's first update start from the base model.
    """
    factors = {}
    for name in sorted(shapes):  # sorted: the draw order must not depend on dict order
        out_f, in_f = shapes[name]
        A = peft_default_A(ranks[name], in_f, generator)  # (r, in)
        B = torch.zeros(out_f, ranks[name])  # (out, r)
        factors[name] = LoraFactors(B=B, A=A, scaling=scalings[name])
    return factors


class AdapterHost:
    """A PeftModel holding one LoRA adapter per rank class (plus one for the global update)."""

    def __init__(
        self,
        model: nn.Module,
        target_modules: list[str],
        lora: LoraSettings,
        class_ranks: Mapping[str, Mapping[str, int]],
    ) -> None:
        """class_ranks: rank class name -> module name -> rank (already capped)."""
        if not class_ranks:
            raise FlexLoraError("at least one rank class is needed")
        self.shapes = target_module_shapes(model, target_modules)
        self.lora = lora
        self.class_ranks = {k: dict(v) for k, v in class_ranks.items()}
        self.model: Any = None  # a PeftModel; Any because its attributes resolve dynamically
        for key, ranks in self.class_ranks.items():
            config = self._lora_config(ranks, lora.alpha, lora.dropout, lora.rslora)
            if self.model is None:
                self.model = get_peft_model(model, config, adapter_name=key)
            else:
                self.model.add_adapter(key, config)
        assert self.model is not None
        self._tuner: Any = self.model.base_model  # the LoraModel that owns the adapters
        self._layers = {
            name[len(_PEFT_PREFIX) :]: module
            for name, module in self.model.named_modules()
            if name.startswith(_PEFT_PREFIX) and name[len(_PEFT_PREFIX) :] in self.shapes
        }
        self._tuner.set_adapter(next(iter(self.class_ranks)))

    def _lora_config(
        self, ranks: Mapping[str, int], alpha: float, dropout: float, rslora: bool
    ) -> LoraConfig:
        # Full module names as rank_pattern keys: PEFT matches a key as a name suffix after a
        # dot, so "model.layers.1.mlp.up_proj" cannot match "model.layers.11.mlp.up_proj".
        default_rank = max(set(ranks.values()), key=list(ranks.values()).count)
        return LoraConfig(
            r=default_rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT takes any real alpha
            lora_dropout=dropout,
            use_rslora=rslora,
            target_modules=sorted({n.rsplit(".", 1)[-1] for n in self.shapes}),
            rank_pattern={n: r for n, r in ranks.items() if r != default_rank},
            bias="none",
            task_type="CAUSAL_LM",
        )

    # -- rank classes ---------------------------------------------------------------

    def scalings(self, key: str) -> dict[str, float]:
        ranks = self.class_ranks[key]
        return {n: lora_scaling(self.lora.alpha, r, self.lora.rslora) for n, r in ranks.items()}

    def activate(self, key: str, *, freeze_A: bool = False) -> list[nn.Parameter]:
        """Make `key` the active adapter and return the parameters to train."""
        assert self.model is not None
        self._tuner.set_adapter(key)
        params = []
        for layer in self._layers.values():
            A = layer.lora_A[key].weight
            B = layer.lora_B[key].weight
            A.requires_grad_(not freeze_A)
            B.requires_grad_(True)
            params.extend([B] if freeze_A else [A, B])
        return params

    @torch.no_grad()
    def load(self, key: str, factors: Mapping[str, LoraFactors]) -> None:
        """Copy factors into adapter `key` (shapes must be the class's ranks)."""
        for name, layer in self._layers.items():
            f = factors[name]
            A = layer.lora_A[key].weight
            B = layer.lora_B[key].weight
            if tuple(A.shape) != tuple(f.A.shape) or tuple(B.shape) != tuple(f.B.shape):
                raise FlexLoraError(
                    f"{name}: adapter {key} has rank {A.shape[0]} "
                    f"but the factors have rank {f.rank}"
                )
            expected = layer.scaling[key]
            if not math.isclose(expected, f.scaling, rel_tol=1e-6):
                raise FlexLoraError(
                    f"{name}: adapter {key} scales by {expected}, factors by {f.scaling}"
                )
            A.copy_(f.A)
            B.copy_(f.B)

    @torch.no_grad()
    def read(self, key: str) -> dict[str, LoraFactors]:
        """The current factors of adapter `key`, as float32 CPU copies."""
        return {
            name: LoraFactors(
                B=layer.lora_B[key].weight.detach().float().cpu().clone(),
                A=layer.lora_A[key].weight.detach().float().cpu().clone(),
                scaling=float(layer.scaling[key]),
            )
            for name, layer in self._layers.items()
        }

    def factor_pairs(self, key: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Live (B, A) parameters of adapter `key`, for regularisers on the client step."""
        return {
            n: (layer.lora_B[key].weight, layer.lora_A[key].weight)
            for n, layer in self._layers.items()
        }

    def base_weights(self) -> dict[str, nn.Parameter]:
        """The frozen base weight (out, in) of every target module (SLoRA's sparse stage
        trains some of its entries)."""
        return {name: layer.base_layer.weight for name, layer in self._layers.items()}

    # -- the global model -----------------------------------------------------------

    def set_global(self, update: Mapping[str, GlobalUpdate] | None) -> None:
        """Install W0 + dW as the adapter `global` (scaling 1: dW is folded into B)."""
        assert self.model is not None
        if GLOBAL_ADAPTER in self.model.peft_config:
            # Deleting the active adapter makes PEFT warn: step onto a class adapter first.
            self._tuner.set_adapter(next(iter(self.class_ranks)))
            self._tuner.delete_adapter(GLOBAL_ADAPTER)
        if update is None:
            return
        # A module whose update is exactly zero still needs rank >= 1 for PEFT.
        ranks = {n: max(1, int(update[n].A.shape[0])) for n in self.shapes}
        config = self._lora_config(ranks, 1.0, 0.0, False)
        config.lora_alpha = config.r  # scaling alpha / r = 1 for the default rank ...
        config.alpha_pattern = {n: r for n, r in ranks.items() if r != config.r}  # ... and the rest
        self.model.add_adapter(GLOBAL_ADAPTER, config)
        with torch.no_grad():
            for name, layer in self._layers.items():
                g = update[name]
                A = layer.lora_A[GLOBAL_ADAPTER].weight
                B = layer.lora_B[GLOBAL_ADAPTER].weight
                A.zero_()
                B.zero_()
                r = g.A.shape[0]
                A[:r].copy_(g.A)
                B[:, :r].copy_(g.B)
        self._tuner.set_adapter(GLOBAL_ADAPTER)

    @contextmanager
    def global_model(self, update: Mapping[str, GlobalUpdate] | None) -> Iterator[nn.Module]:
        """The model W0 + dW for evaluation; W0 alone when `update` is None."""
        assert self.model is not None
        active = self.model.active_adapter
        self.set_global(update)
        try:
            if update is None:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
        finally:
            self.set_global(None)
            self._tuner.set_adapter(active)

    @torch.no_grad()
    def merge_into_base(self, update: Mapping[str, GlobalUpdate]) -> None:
        """W0 <- W0 + dW for every module (FLoRA folds each round's update into the base)."""
        for name, layer in self._layers.items():
            g = update[name]
            W = layer.base_layer.weight
            # (out, R) @ (R, in) -> (out, in)
            W.add_((g.B.to(W.device, torch.float32) @ g.A.to(W.device, torch.float32)).to(W.dtype))
