"""ClientTask and ClientReply as Flower RecordDicts, and back.

A task travels as three records: "task" (a ConfigRecord of the plain fields, ranks and
options as JSON), "start" (the start factors, one Array per factor, keyed
"<module>|B" and "<module>|A") and "base" (every update folded into the base weights so
far, for FLoRA and FedEx-LoRA: a node that started late or restarted rebuilds its base
from it). A reply travels as "reply" (ConfigRecord) and "factors" (ArrayRecord).
Factors may travel in float16 (`flower.transport_dtype`); they are float32 again on
arrival, before anything is computed with them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from flexlora.aggregation.base import GlobalUpdate
from flexlora.client import ClientReply, ClientTask
from flexlora.lora import LoraFactors

_SEP = "|"  # module names hold dots; this character they never hold
_DTYPES = {"float32": np.float32, "float16": np.float16}


def _array(tensor: torch.Tensor, dtype: str) -> Array:
    return Array(tensor.detach().cpu().float().numpy().astype(_DTYPES[dtype]))


def _tensor(array: Array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.numpy(), dtype=np.float32))


def encode_factors(factors: Mapping[str, LoraFactors], dtype: str) -> ArrayRecord:
    arrays: dict[str, Array] = {}
    for name, f in factors.items():
        arrays[f"{name}{_SEP}B"] = _array(f.B, dtype)
        arrays[f"{name}{_SEP}A"] = _array(f.A, dtype)
    return ArrayRecord(arrays)


def decode_factors(record: ArrayRecord, scalings: Mapping[str, float]) -> dict[str, LoraFactors]:
    return {
        name: LoraFactors(
            B=_tensor(record[f"{name}{_SEP}B"]),
            A=_tensor(record[f"{name}{_SEP}A"]),
            scaling=float(s),
        )
        for name, s in scalings.items()
    }


def encode_base(merged: Sequence[Mapping[str, GlobalUpdate]]) -> ArrayRecord:
    """Updates folded into the base, in order; always float32 (they are few and exact)."""
    arrays: dict[str, Array] = {}
    for index, update in enumerate(merged):
        for name, g in update.items():
            arrays[f"{index}{_SEP}{name}{_SEP}B"] = _array(g.B, "float32")
            arrays[f"{index}{_SEP}{name}{_SEP}A"] = _array(g.A, "float32")
    return ArrayRecord(arrays)


def decode_base(record: ArrayRecord, count: int) -> list[dict[str, GlobalUpdate]]:
    merged: list[dict[str, GlobalUpdate]] = [{} for _ in range(count)]
    for key in record:
        index, name, part = key.split(_SEP)
        if part == "B":
            merged[int(index)][name] = GlobalUpdate(
                B=_tensor(record[key]),
                A=_tensor(record[f"{index}{_SEP}{name}{_SEP}A"]),
            )
    return merged


def encode_task(
    task: ClientTask, merged: Sequence[Mapping[str, GlobalUpdate]], dtype: str
) -> RecordDict:
    config = ConfigRecord(
        {
            "client_id": task.client_id,
            "round": task.round,
            "rank_class": task.rank_class,
            "ranks": json.dumps(task.ranks),
            "scalings": json.dumps({n: f.scaling for n, f in task.start.items()}),
            "seed": task.seed,
            "recipe": task.recipe,
            "recipe_options": json.dumps(task.recipe_options),
            "merged": len(merged),
        }
    )
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        "task": config,
        "start": encode_factors(task.start, dtype),
        "base": encode_base(merged),
    }
    if task.sparse is not None:  # SLoRA's sparse stage: always float32 (sums of small steps)
        records["sparse"] = encode_values(task.sparse)
    return RecordDict(records)


def encode_values(values: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: _array(v, "float32") for name, v in values.items()})


def decode_values(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: _tensor(record[name]) for name in record}


def decode_task(content: RecordDict) -> tuple[ClientTask, list[dict[str, GlobalUpdate]]]:
    config = content.config_records["task"]
    scalings = json.loads(str(config["scalings"]))
    task = ClientTask(
        client_id=str(config["client_id"]),
        round=int(config["round"]),  # type: ignore[arg-type]
        rank_class=str(config["rank_class"]),
        ranks={n: int(r) for n, r in json.loads(str(config["ranks"])).items()},
        start=decode_factors(content.array_records["start"], scalings),
        seed=int(config["seed"]),  # type: ignore[arg-type]
        recipe=str(config["recipe"]),
        recipe_options=json.loads(str(config["recipe_options"])),
        sparse=decode_values(content.array_records["sparse"])
        if "sparse" in content.array_records
        else None,
    )
    merged = decode_base(content.array_records["base"], int(config["merged"]))  # type: ignore[arg-type]
    return task, merged


def encode_reply(reply: ClientReply, dtype: str) -> RecordDict:
    config = ConfigRecord(
        {
            "client_id": reply.client_id,
            "num_examples": reply.num_examples,
            "loss": reply.loss,
            "tokens": reply.tokens,
            "seconds": reply.seconds,
            "ranks": json.dumps(reply.ranks),
            "error": reply.error or "",
        }
    )
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {"reply": config}
    if reply.factors is not None:
        config["scalings"] = json.dumps({n: f.scaling for n, f in reply.factors.items()})
        records["factors"] = encode_factors(reply.factors, dtype)
    if reply.sparse is not None:
        records["sparse"] = encode_values(reply.sparse)
    return RecordDict(records)


def decode_reply(content: RecordDict) -> ClientReply:
    try:
        config = content.config_records["reply"]
        factors = None
        if "factors" in content.array_records:
            scalings = json.loads(str(config["scalings"]))
            factors = decode_factors(content.array_records["factors"], scalings)
        return ClientReply(
            client_id=str(config["client_id"]),
            factors=factors,
            num_examples=int(config["num_examples"]),  # type: ignore[arg-type]
            ranks={n: int(r) for n, r in json.loads(str(config["ranks"])).items()},
            loss=float(config["loss"]),  # type: ignore[arg-type]
            tokens=int(config["tokens"]),  # type: ignore[arg-type]
            seconds=float(config["seconds"]),  # type: ignore[arg-type]
            error=str(config["error"]) or None,
            sparse=decode_values(content.array_records["sparse"])
            if "sparse" in content.array_records
            else None,
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"not a flexlora reply ({type(e).__name__}: {e})") from e


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array in a message's content (what dominates its size on the wire)."""
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())
