"""LoRA factor types and scaling.

A LoRA module holds `B` (out × r) and `A` (r × in); its effective weight update is
`scaling · B @ A` with `scaling = alpha / r`, or `alpha / sqrt(r)` under rsLoRA.
Everything in flexlora that moves adapters around speaks in these types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from flexlora.errors import FlexLoraError


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's scaling of a LoRA update: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    if rank <= 0:
        raise FlexLoraError(f"LoRA rank must be positive, got {rank}")
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def peft_default_A(rows: int, in_features: int, generator: torch.Generator) -> Tensor:
    """A (rows, in) as PEFT initialises lora_A, from an explicit generator.

    kaiming_uniform_(a=√5), PEFT's default, is exactly U(-1/√in, 1/√in).
    """
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rows, in_features, generator=generator) * 2 - 1) * bound  # (rows, in)


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA factors: effective update `scaling · B @ A`.

    B: (out, r), A: (r, in). Invariants are checked at construction.
    """

    B: Tensor
    A: Tensor
    scaling: float

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2:
            raise FlexLoraError(
                f"LoRA factors must be 2-D, got B {tuple(self.B.shape)} and A {tuple(self.A.shape)}"
            )
        if self.B.shape[1] != self.A.shape[0]:
            raise FlexLoraError(
                f"LoRA rank mismatch: B is {tuple(self.B.shape)} but A is {tuple(self.A.shape)}"
            )

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the weight this module updates."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self) -> Tensor:
        """The dense update `scaling · B @ A`: (out, r) @ (r, in) -> (out, in)."""
        return self.scaling * (self.B @ self.A)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LoraFactors:
        return LoraFactors(
            self.B.to(device=device, dtype=dtype),
            self.A.to(device=device, dtype=dtype),
            self.scaling,
        )


# One client's adapter: module name (e.g. "model.layers.0.self_attn.q_proj") -> factors.
AdapterFactors = Mapping[str, LoraFactors]
