"""What one round costs on the wire at the paper preset's shapes, against full-size updates.

    python benchmarks/wire_cost.py [--dtype float32|float16]

Computed from the shapes (LLaMA-1.3B as in configs/paper/ni-flexlora.yaml: 24 layers,
hidden 2048, FFN 5504, LoRA on q, k, v, o, gate, up, down) and the paper's four rank
types: a client at rank r on a module (out, in) receives its start factors and sends its
trained factors, r (out + in) numbers each way; sending full-size updates costs
out · in numbers each way. One module's task is also encoded as flexlora's Flower
payload, to check the formula against the bytes that actually travel.
"""

from __future__ import annotations

import argparse

import torch
from flwr.app import RecordDict

from flexlora.flower.payload import array_bytes, encode_factors
from flexlora.lora import LoraFactors
from flexlora.ranks import PAPER_RANK_TYPES, distribution_probabilities, resolve_rank_type

LAYERS, HIDDEN, FFN = 24, 2048, 5504
PROJECTIONS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}
SHAPES = {
    f"model.layers.{i}.{name}": shape for i in range(LAYERS) for name, shape in PROJECTIONS.items()
}
BYTES = {"float32": 4, "float16": 2}


def factor_numbers(rank_type: object) -> int:
    ranks = resolve_rank_type(rank_type, SHAPES)  # type: ignore[arg-type]
    return sum(ranks[n] * (o + i) for n, (o, i) in SHAPES.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=list(BYTES), default="float32")
    args = parser.parse_args()
    size = BYTES[args.dtype]
    full = sum(o * i for o, i in SHAPES.values())
    gib = 1024**3

    print(f"LLaMA-1.3B shapes, {len(SHAPES)} LoRA modules, factors in {args.dtype}")
    print(f"full-size update: {full * size / gib:.2f} GiB each way per client per round")
    per_type = [factor_numbers(t) for t in PAPER_RANK_TYPES]
    for index, (t, numbers) in enumerate(zip(PAPER_RANK_TYPES, per_type, strict=True)):
        print(
            f"type {index + 1} {t}: {numbers * size / 2**20:8.1f} MiB each way "
            f"({full / numbers:6.1f}x less than full size)"
        )
    for distribution in ("uniform", "heavy-tail-light", "heavy-tail-strong", "normal"):
        probs = distribution_probabilities(distribution, len(PAPER_RANK_TYPES))
        mean = sum(p * n for p, n in zip(probs, per_type, strict=True))
        clients = 80  # 5% of the paper's 1,613 clients a round
        round_bytes = 2 * clients * mean * size
        print(
            f"{distribution:>17}: {mean * size / 2**20:7.1f} MiB per client each way, "
            f"{round_bytes / gib:6.2f} GiB a round for {clients} clients "
            f"(full size: {2 * clients * full * size / gib:7.1f} GiB, "
            f"{full / mean:5.1f}x more)"
        )

    # The formula against the payload that travels: one q_proj at rank 200.
    out_f, in_f = PROJECTIONS["self_attn.q_proj"]
    factors = {"q": LoraFactors(torch.zeros(out_f, 200), torch.zeros(200, in_f), 1.0)}
    sent = array_bytes(RecordDict({"factors": encode_factors(factors, args.dtype)}))
    formula = 200 * (out_f + in_f) * size
    print(f"payload check, q_proj at rank 200: {sent:,} bytes encoded, {formula:,} by formula "
          f"(+{sent - formula} bytes of array headers)")  # fmt: skip


if __name__ == "__main__":
    main()
