"""Greedy generation in evaluation: the lean decoding loop against transformers' generate.

    .venv/bin/python benchmarks/generation.py [--repeats 3] [--threads 2] [--lora]
        [--no-evaluate] [--never-stop] [--device cpu]

The shipped `builtin:flexlora-tiny` (loaded as a run loads it:
`flexlora.experiment.load_model_and_tokenizer`: float32 on the CPU, bfloat16 on a GPU
that has it) answers the default run's unseen test split (`flexlora run` with no
arguments: the default synthetic suite, seed 0, every unseen client's `test` examples),
batched as `evaluate_clients` batches them (longest prompt first, `eval.batch_size` 16,
`eval.max_new_tokens` 16). With --lora the model is first wrapped in a PEFT LoRA adapter
(rank 8 on all 7 projections, random non-zero factors), as the engine evaluates the global
model. With --never-stop the EOS id given to both paths is the BOS id, which the model
does not produce, so every answer runs the full max_new_tokens: the per-token cost, as
with a model that answers at length (real data wants 64 tokens).

hf:    `flexlora.evaluate._generate_batch_hf`, i.e. `model.generate` with the greedy
       GenerationConfig evaluate used before (the reference).
lean:  `flexlora.evaluate.generate_batch`, the decoding loop evaluate uses now.

First line: generation alone, every batch of the split once a repeat. Second line (not
with --no-evaluate or --never-stop): the whole `evaluate_clients` call (tokenisation, the
scoring forward, generation, Rouge-L) with `generate_batch` swapped for the hf path,
against as shipped.
Each side gets one warm-up, then the repeats alternate hf / lean with the order flipped
every repeat; the medians and the min-max spread are printed, with their ratio (hf / lean,
> 1 means the lean loop is faster). The script checks that both sides produce the same
tokens (and the same Rouge-L, loss and predictions for evaluate_clients) and exits 1
otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import flexlora.evaluate as evaluate
from flexlora.config import EvalConfig, load_config
from flexlora.data.dataset import load_federated_dataset
from flexlora.experiment import load_model_and_tokenizer, pick_device

Generate = Callable[..., list[list[int]]]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def wrap_in_lora(model: Any) -> Any:
    """The model behind a rank-8 PEFT adapter with non-zero B (a trained global model's cost)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, config)


def generate_split(
    generate: Generate,
    model: Any,
    batches: Sequence[list[list[int]]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    eval_cfg: EvalConfig,
    device: torch.device,
) -> list[list[int]]:
    """Every batch through `generate`, as evaluate_clients calls it; the new tokens of all."""
    out: list[list[int]] = []
    with torch.inference_mode():
        for prompts in batches:
            out.extend(
                generate(
                    model,
                    prompts,
                    pad_token_id=pad_token_id,
                    eos_token_id=eos_token_id,
                    max_new_tokens=eval_cfg.max_new_tokens,
                    device=device,
                )
            )
    return out


Times = list[tuple[float, float]]
"""(wall seconds, CPU seconds of this process) per timed run."""


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def alternate(
    hf: Callable[[], Any], lean: Callable[[], Any], repeats: int
) -> tuple[Times, Times, Any, Any]:
    """One warm-up each, then `repeats` timed runs of each, the order flipped every repeat."""
    *_, hf_value = timed(hf)
    *_, lean_value = timed(lean)
    hf_times: Times = []
    lean_times: Times = []
    for r in range(repeats):
        order = [("hf", hf), ("lean", lean)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall, cpu, _ = timed(fn)
            (hf_times if name == "hf" else lean_times).append((wall, cpu))
    return hf_times, lean_times, hf_value, lean_value


def line(what: str, hf_times: Times, lean_times: Times) -> str:
    """Median wall seconds (min-max) and median CPU seconds of each side, and their ratios."""

    def side(times: Times) -> tuple[float, float, str]:
        walls = [w for w, _ in times]
        wall, cpu = statistics.median(walls), statistics.median(c for _, c in times)
        return wall, cpu, f"{wall:.3f} s ({min(walls):.3f}-{max(walls):.3f}), CPU {cpu:.3f} s"

    hf_wall, hf_cpu, hf_text = side(hf_times)
    lean_wall, lean_cpu, lean_text = side(lean_times)
    return (
        f"{what}:\n  hf   {hf_text}\n  lean {lean_text}\n"
        f"  hf/lean {hf_wall / lean_wall:.2f} (wall), {hf_cpu / lean_cpu:.2f} (CPU)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="wrap the model in a LoRA adapter")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluate_clients line")
    parser.add_argument(
        "--never-stop", action="store_true", help="EOS id := BOS id: every answer runs 16 tokens"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (as model.device)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    cfg = load_config(None, [])  # the default run's configuration
    eval_cfg = cfg.eval
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    if args.lora:
        model = wrap_in_lora(model).to(device)
    model.eval()
    eos_token_id = evaluate._eos_token_id(tokenizer)
    if args.never_stop:
        eos_token_id = int(tokenizer.bos_token_id)
    pad_token_id = evaluate._pad_token_id(tokenizer)

    chosen = evaluate.selected_examples(dataset.unseen, "test", eval_cfg.max_examples_per_client)
    encoded = evaluate.encode_examples(tokenizer, [ex for _, _, ex in chosen], cfg.data)
    # evaluate_clients' batching: longest prompt first, ties in example order.
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].prompt_ids), i))
    prompts = [encoded[i].prompt_ids for i in order]
    batches = [
        prompts[s : s + eval_cfg.batch_size] for s in range(0, len(prompts), eval_cfg.batch_size)
    ]
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; "
        f"{cfg.model.path}{' + LoRA r8' if args.lora else ''}; {len(dataset.unseen)} unseen "
        f"clients, {len(prompts)} test prompts ({min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens) in {len(batches)} batches of "
        f"{eval_cfg.batch_size}, max_new_tokens {eval_cfg.max_new_tokens}"
        f"{', EOS id := BOS id' if args.never_stop else ''}"
    )

    def gen(fn: Generate) -> Callable[[], list[list[int]]]:
        return lambda: generate_split(
            fn,
            model,
            batches,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            eval_cfg=eval_cfg,
            device=device,
        )

    hf_times, lean_times, hf_ids, lean_ids = alternate(
        gen(evaluate._generate_batch_hf), gen(evaluate.generate_batch), args.repeats
    )
    n_new = sum(len(ids) for ids in lean_ids)
    same = hf_ids == lean_ids
    print(line("generation", hf_times, lean_times))
    print(
        f"  {n_new} new tokens (EOS excluded), "
        f"{sum(len(ids) == eval_cfg.max_new_tokens for ids in lean_ids)} answers cut at "
        f"max_new_tokens; tokens identical: {same}"
    )

    if not args.no_evaluate and not args.never_stop:
        shipped = evaluate.generate_batch

        def run_eval(fn: Generate) -> Callable[[], dict[str, Any]]:
            def call() -> dict[str, Any]:
                evaluate.generate_batch = fn  # evaluate_clients reads the module global
                try:
                    result = evaluate.evaluate_clients(
                        model,
                        tokenizer,
                        dataset.unseen,
                        "test",
                        cfg.data,
                        eval_cfg,
                        device=device,
                        keep_predictions=True,
                    )
                finally:
                    evaluate.generate_batch = shipped
                out = result.to_dict()
                del out["seconds"]
                return out

            return call

        hf_eval_times, lean_eval_times, hf_result, lean_result = alternate(
            run_eval(evaluate._generate_batch_hf), run_eval(shipped), args.repeats
        )
        same_eval = hf_result == lean_result
        same = same and same_eval
        print(line("evaluate_clients (unseen test split)", hf_eval_times, lean_eval_times))
        print(
            f"  Rouge-L {lean_result['rougeL']:.2f}, loss {lean_result['loss']:.4f}; "
            f"results identical: {same_eval}"
        )

    if not same:
        print("ERROR: the two paths disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
