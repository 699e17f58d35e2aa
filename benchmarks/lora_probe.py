"""Can a base model be fine-tuned with LoRA on the offline default suite? A central probe.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_probe.py --rank 16 --lr 3e-3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_probe.py --full --lr 1e-3

Pools the seen clients' training examples of the default world suite (seed 0) and
trains one model on them, centrally (no federation): a peft LoRA adapter of `--rank`
on every attention and MLP projection (alpha 16, no dropout), or with `--full` every
weight. AdamW, batches of 8, the loss on the response tokens only, as fine-tuning in
flexlora takes it. Every 100 steps it prints the loss on the first 96 seen eval
examples. Full fine-tuning is the reference: when it learns and LoRA does not, the
frozen base model is what stops LoRA (issue 11 found this of the previous base model).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexlora.assets import resolve_model_path
from flexlora.config import MODULE_GROUPS
from flexlora.data.synthetic import build_synthetic_suite
from rank_capacity import collate, encode  # this folder is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:flexlora-tiny", help="model folder")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--full", action="store_true", help="fine-tune every weight instead")
    args = parser.parse_args()

    torch.manual_seed(0)
    draw = random.Random(0)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if not args.full:
        targets = [*MODULE_GROUPS["attention"], *MODULE_GROUPS["mlp"]]
        lora = LoraConfig(r=args.rank, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
        model = get_peft_model(model, lora)
    suite = build_synthetic_suite({}, 0)
    seen = [c for cid, c in suite.clients.items() if cid not in suite.unseen_ids]
    train = encode(tokenizer, [e for c in seen for e in c.train])
    evals = collate(
        encode(tokenizer, [e for c in seen for e in c.eval])[:96], tokenizer.pad_token_id
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.lr)
    started = time.perf_counter()
    what = "full fine-tuning" if args.full else f"LoRA rank {args.rank}"
    print(f"{what}, lr {args.lr:g}, {len(train)} training examples, {args.steps} steps of 8")
    for step in range(args.steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                eval_loss = model(**evals).loss.item()
            seconds = time.perf_counter() - started
            print(f"step {step:5d}  seen eval loss {eval_loss:.3f}  ({seconds:.0f} s)")
        if step == args.steps:
            break
        loss = model(**collate(draw.sample(train, 8), tokenizer.pad_token_id)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
