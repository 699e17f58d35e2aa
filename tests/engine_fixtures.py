"""A tiny 2-layer Llama with its own byte-level BPE tokenizer, made in-process.

Engine tests need a real transformers model and tokenizer but no download: this builds
both in a second from text the test suite generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flexlora.data.synthetic import build_synthetic_suite
from flexlora.data.templates import format_prompt

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _corpus() -> list[str]:
    suite = build_synthetic_suite({}, seed=0)
    texts = []
    for client in suite.clients.values():
        for ex in client.train[:8]:
            texts.append(format_prompt(ex, "alpaca") + ex.output)
    return texts


def make_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """Save a random `layers`-layer Llama and a 400-token BPE tokenizer into `folder`."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)  # test fixture only: a fixed random base model
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def quick_overrides(model: Path, cache: Path | str, *extra: str) -> list[str]:
    """`--set` values for a run of a few seconds on `model` (few clients, steps and
    generated tokens); `extra` overrides come last and win."""
    return [
        f"model.path={model}",
        f"data.cache_dir={cache}",
        "data.synthetic={suite: families, num_clients: 12, train_per_client: 16, "
        "eval_per_client: 2, test_per_client: 2}",
        "data.max_length=128",
        "federation.rounds=3",
        "federation.clients_per_round=3",
        "federation.local_steps=4",
        "federation.batch_size=4",
        "federation.lr=0.01",
        "ranks.types=[2, 4, 8]",
        "eval.max_new_tokens=4",
        "eval.max_examples_per_client=2",
        *extra,
    ]


def set_args(sets: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]"""
    return [arg for s in sets for arg in ("--set", s)]


def global_delta(run: Path) -> dict[str, torch.Tensor]:
    """module -> the dense update B @ A (float64) of a run folder's global adapter."""
    tensors = load_file(str(run / "adapters" / "global" / "adapter_model.safetensors"))
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    return {
        m: tensors[f"{m}.lora_B.weight"].double() @ tensors[f"{m}.lora_A.weight"].double()
        for m in modules
    }


def without_timings(value: Any) -> Any:
    """A record with every wall-clock field ("...seconds") taken out."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def force_eos_row_by_row(model: Any, eos_token_id: int) -> tuple[list[int], Any]:
    """Make row c of a batch answer c tokens, through the output layer: at its c-th call
    (c = 0 the prefill) row c's EOS logit goes above every other. Greedy decoding calls
    the output layer once a step, so any two decoders see the same forcing. Returns the
    calls so far (clear it between decoders) and the hook's handle (remove it after)."""
    calls: list[int] = []

    def force_eos(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        c = len(calls)
        calls.append(c)
        if c < output.shape[0]:
            output = output.clone()
            output[c, -1, eos_token_id] = output[c, -1].max() + 100.0  # (B, T, V): row c, last
        return output

    return calls, model.lm_head.register_forward_hook(force_eos)
