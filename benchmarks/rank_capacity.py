"""Does LoRA rank matter on the synthetic suite with the shipped base model?

    python benchmarks/rank_capacity.py --steps 1000 --lr 1=3e-3 2=3e-3 8=1e-3 32=1e-3

For each seed: build the synthetic suite, pool the training split of eight clients from
eight families (two of them, translate and secret_code, memorised look-up tables), and
fine-tune the shipped `builtin:flexlora-tiny` with plain PEFT LoRA on all attention and
MLP projections, centrally, with the same steps and batch at every rank. Scaling is held constant
(alpha = 2r, so alpha/r = 2): ranks differ only in capacity. The learning rate can be set
per rank (`RANK=LR`), because with alpha = 2r a step of Adam moves B·A about r times as
far: each rank gets the rate that fits it best in a sweep (see docs/benchmarks/synthetic.md).

Reported per rank, mean ± std over seeds: the loss on training examples after training
(response tokens only, eval mode; the same number of examples from every client), Rouge-L
of greedy generations on the same clients' eval split, and the loss per client. The
reference row is the base model without fine-tuning. The ratio printed at the end is
(highest rank's loss) / (lowest rank's loss), per seed."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from rouge_score import rouge_scorer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from flexlora.assets import resolve_model_path
from flexlora.data.synthetic import FAMILIES, build_synthetic_suite
from flexlora.data.types import Example
from flexlora.tools.build_tiny_model import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CLIENTS = [
    "translate-v0", "secret_code-v1", "reverse_words-v0", "arithmetic-v0",
    "key_value-v0", "change_case-v0", "count-v0", "date_format-v0",
]  # fmt: skip
""""Training clients pooled: one per family, rule-based and memorised tasks."""


@dataclass(frozen=True)
class Settings:
    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    train_per_client: int = 32
    eval_per_client: int = 8
    fit_examples: int = 128
    max_new_tokens: int = 16


def prompt_of(e: Example) -> str:
    template = ALPACA_WITH_INPUT if e.input else ALPACA_NO_INPUT
    return template.format(instruction=e.instruction, input=e.input)


def encode(
    tok: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: prompt + response + </s>, labels -100 on the prompt."""
    out = []
    for e in examples:
        prompt = tok(prompt_of(e))["input_ids"]
        answer = tok(e.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: (batch, longest) ids, mask and labels."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = (
            torch.tensor(x),
            torch.tensor(y),
            1,
        )
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def mean_loss(
    model: PreTrainedModel, rows: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> float:
    """Token-weighted response loss over `rows`, eval mode."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), 64):
        batch = collate(rows[i : i + 64], pad_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count


@torch.no_grad()
def rouge_l(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, examples: Sequence[Example], max_new: int
) -> float:
    """Mean Rouge-L F of greedy generations against the references (left-padded prompts)."""
    model.eval()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = []
    for i in range(0, len(examples), 48):
        chunk = examples[i : i + 48]
        batch = tok(
            [prompt_of(e) for e in chunk], return_tensors="pt", padding=True, padding_side="left"
        )
        out = model.generate(
            **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        scores += [
            scorer.score(e.output, t.strip())["rougeL"].fmeasure
            for e, t in zip(chunk, texts, strict=True)
        ]
    return float(np.mean(scores))


def finetune(
    base_path: str, rank: int, train_rows: list, seed: int, s: Settings, pad_id: int
) -> PreTrainedModel:
    """Plain PEFT LoRA, AdamW, constant lr, random batches drawn with an explicit generator."""
    gen = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng():  # PEFT draws A's init from the global generator
        torch.manual_seed(seed)
        model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    model.train()
    for _ in range(s.steps):
        idx = torch.randint(len(train_rows), (s.batch_size,), generator=gen)
        loss = model(**collate([train_rows[int(i)] for i in idx], pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def parse_lrs(values: Sequence[str], ranks: Sequence[int], default: float) -> dict[int, float]:
    """Learning rate per rank from `LR` (every rank) or `RANK=LR` items; `default` elsewhere."""
    lrs = dict.fromkeys(ranks, default)
    for value in values:
        rank, sep, lr = value.rpartition("=")
        if sep:
            lrs[int(rank)] = float(lr)
        else:
            lrs = dict.fromkeys(ranks, float(lr))
    return lrs


def mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:flexlora-tiny")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument(
        "--lr", nargs="+", default=[], metavar="[RANK=]LR",
        help=f"learning rate, for every rank or per rank (default {Settings.lr})",
    )  # fmt: skip
    parser.add_argument("--clients", nargs="+", default=CLIENTS, help="client ids to pool")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    s = Settings(steps=args.steps)
    lrs = parse_lrs(args.lr, args.ranks, s.lr)
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    # results[row]["loss" | "rouge" | client id] = one value per seed
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()

    def record(
        name: str, model: PreTrainedModel, fit_by_client: dict[str, list], evals: list[Example]
    ) -> None:
        row = results.setdefault(name, {})
        fit_rows = [r for rows in fit_by_client.values() for r in rows]
        row.setdefault("loss", []).append(mean_loss(model, fit_rows, tok.pad_token_id))
        row.setdefault("rouge", []).append(rouge_l(model, tok, evals, s.max_new_tokens))
        for client, rows in fit_by_client.items():
            row.setdefault(client, []).append(mean_loss(model, rows, tok.pad_token_id))

    for seed in args.seeds:
        options = {  # every task a seen client, so that any client id can be pooled
            "suite": "families",
            "num_clients": sum(len(f.variants) for f in FAMILIES.values()),
            "unseen_families": [],
            "unseen_variant_fraction": 0.0,
            "train_per_client": s.train_per_client,
            "eval_per_client": s.eval_per_client,
        }
        suite = build_synthetic_suite(options, seed)
        train = [e for c in args.clients for e in suite.clients[c].train]
        evals = [e for c in args.clients for e in suite.clients[c].eval]
        train_rows = encode(tok, train)
        # the fit is measured on the first fit_examples / len(clients) training rows of
        # each client (all were trained on), so every client weighs the same
        per_client = s.fit_examples // len(args.clients)
        fit_by_client = {
            c: train_rows[i * s.train_per_client : i * s.train_per_client + per_client]
            for i, c in enumerate(args.clients)
        }
        record("base", AutoModelForCausalLM.from_pretrained(path), fit_by_client, evals)
        for rank in args.ranks:
            settings = replace(s, lr=lrs[rank])
            model = finetune(path, rank, train_rows, seed, settings, tok.pad_token_id)
            record(f"r={rank}", model, fit_by_client, evals)
            row = results[f"r={rank}"]
            print(f"seed {seed} rank {rank} lr {lrs[rank]:g}: loss {row['loss'][-1]:.4f} "
                  f"rouge-L {row['rouge'][-1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {s.steps} steps "
          f"of batch {s.batch_size}, alpha = 2r, model {args.model}")  # fmt: skip
    print("\n| rank | lr | train loss (mean ± std) | Rouge-L on eval split (mean ± std) |")
    print("| --- | ---: | --- | --- |")
    for name, row in results.items():
        lr = "-" if name == "base" else f"{lrs[int(name[2:])]:g}"
        print(f"| {name} | {lr} | {mean_sd(row['loss'])} | {mean_sd(row['rouge'])} |")
    print("\nTrain loss per client (mean over seeds):\n")
    print("| client | " + " | ".join(results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for client in args.clients:
        cells = [f"{statistics.mean(row[client]):.3f}" for row in results.values()]
        print(f"| {client} | " + " | ".join(cells) + " |")
    lo, hi = f"r={min(args.ranks)}", f"r={max(args.ranks)}"
    ratios = [h / lo_ for h, lo_ in zip(results[hi]["loss"], results[lo]["loss"], strict=True)]
    listed = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"\nloss ratio {hi} / {lo} per seed: {listed}; mean {statistics.mean(ratios):.3f}"
          f"  (total {time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
