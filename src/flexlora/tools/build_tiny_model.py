"""Build the shipped base model `builtin:flexlora-tiny` from the project's own text.

    python -m flexlora.tools.build_tiny_model --out src/flexlora/assets/flexlora-tiny

Steps: generate a pretraining corpus (Alpaca-formatted examples of the synthetic task
families' *pretraining-only* variants, open-book questions about fresh made-up worlds
in wordings the world suite's clients never use, plus plain pseudo-word text), train a
byte-level BPE tokenizer on it, pretrain a small Llama-architecture causal LM on it, and write the
model folder atomically (temp folder next to the target, then rename).

Why this mix: the base model should know the prompt format and the families' skills, but
not the federated clients' exact tasks (their wordings, parameters and look-up tables
differ), so federated fine-tuning has something to learn and more LoRA rank can fit more
of it. No text from public datasets is involved; everything is generated from seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from numpy.random import Generator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flexlora.data.synthetic import pretraining_examples
from flexlora.data.synthetic.words import pick, pseudo_word
from flexlora.data.synthetic.world import pretraining_examples as world_pretraining_examples
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

# The standard Alpaca prompt wording (as in the FlexLoRA authors' code).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, Llama's order for the first three


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the shipped model; the defaults are what ships."""

    seed: int = 0
    vocab_size: int = 2048
    """Byte-level BPE: 256 bytes + 4 specials + merges (template words, syllables)."""
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 512
    block_size: int = 256
    """Tokens per packed training row (documents are concatenated, <s> ... </s> each)."""
    batch_size: int = 16
    steps: int = 1200
    lr: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 0.01
    text_fraction: float = 0.05
    """Share of corpus documents that are plain pseudo-word text rather than instructions."""
    world_fraction: float = 0.4
    """Share of corpus documents that are open-book world questions (see world.py)."""
    loss_on_context: bool = True
    """Take the loss on every token, prompt included, not on the responses only: a model
    this small pretrained on responses alone learns the language too poorly for LoRA to
    fine-tune it (the loss barely moves and higher learning rates diverge)."""
    tokenizer_docs: int = 20_000
    threads: int = 1
    """The shipped build ran on one thread (461 s for 1,200 steps): with two threads on two
    cores that other work shared, steps took four times as long."""
    compile: bool = True
    """torch.compile the training step: about 2.4x faster on a 2-core CPU after a ~1 min compile."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise FlexLoraError(
                "build: hidden_size must divide by num_heads, num_heads by num_kv_heads"
            )
        if self.steps < 1 or self.batch_size < 1 or self.block_size < 16:
            raise FlexLoraError("build: steps and batch_size must be >= 1, block_size >= 16")
        fractions = (self.text_fraction, self.world_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise FlexLoraError(
                "build: text_fraction and world_fraction must be >= 0 and sum to less than 1, "
                f"got {self.text_fraction} and {self.world_fraction}"
            )


SMOKE_CONFIG = BuildConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=2, num_kv_heads=1, block_size=256, batch_size=2, steps=2,
                           warmup_steps=1, tokenizer_docs=200, compile=False)  # fmt: skip
"""A seconds-long build for tests: same code path, tiny sizes."""


Document = tuple[str, str]
"""(context, target) of one pretraining document: the loss is taken on the target only.
An instruction example is (Alpaca prompt, response); plain text is ("", text)."""


def alpaca_prompt(example: Example) -> str:
    """The example's Alpaca prompt, up to and including '### Response:\\n'."""
    template = ALPACA_WITH_INPUT if example.input else ALPACA_NO_INPUT
    return template.format(instruction=example.instruction, input=example.input)


def format_example(example: Example) -> str:
    """An example as prompt + response in the Alpaca template."""
    return alpaca_prompt(example) + example.output


def plain_text(rng: Generator) -> str:
    """A document of generic text whose second half is predictable from the first.

    Mostly a random run of pseudo-words (or numbers) said two or three times: every
    repeated token is a dense training signal for copying from the context (induction),
    the skill nearly every task family needs and the hardest one to get from the sparse
    response tokens of instruction examples alone. The rest counts upwards.
    """
    kind = int(rng.integers(4))
    if kind == 3:
        start = int(rng.integers(0, 90))
        return " ".join(str(start + i) for i in range(int(rng.integers(4, 12))))
    n = int(rng.integers(3, 9))
    if kind == 2:
        items = [
            str(int(rng.integers(100))) if rng.random() < 0.4 else pseudo_word(rng)
            for _ in range(n)
        ]
    else:
        items = [pseudo_word(rng, 1, 2) for _ in range(n)]
    run = pick(rng, (" ", ", ")).join(items)
    return pick(rng, ("\n", " | ", ". ")).join([run] * int(rng.integers(2, 4)))


def corpus_documents(
    n: int, rng: Generator, text_fraction: float, world_fraction: float = 0.0
) -> list[Document]:
    """`n` pretraining documents, deterministic for the generator's state."""
    n_text, n_world = round(n * text_fraction), round(n * world_fraction)
    examples = pretraining_examples(n - n_text - n_world, rng)
    examples += world_pretraining_examples(n_world, rng)
    docs = [(alpaca_prompt(e), e.output) for e in examples]
    docs += [("", plain_text(rng)) for _ in range(n_text)]
    order = rng.permutation(len(docs))
    return [docs[int(i)] for i in order]


def tokenize_documents(
    tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document], loss_on_context: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per document: <s> context target </s>, labels -100 over <s> context
    (over <s> alone with `loss_on_context`).

    Context and target are tokenised apart, as fine-tuning does; the byte-level
    pre-tokenizer splits at the newline ending every prompt, so this equals tokenising
    the joined text.
    """
    contexts = tokenizer([c for c, _ in docs])["input_ids"]
    targets = tokenizer([t for _, t in docs], add_special_tokens=False)["input_ids"]
    eos = int(tokenizer.eos_token_id)
    return [
        (
            ctx + tgt + [eos],
            ([-100, *ctx[1:]] if loss_on_context else [-100] * len(ctx)) + tgt + [eos],
        )
        for ctx, tgt in zip(contexts, targets, strict=True)
    ]


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (digits split one by one) with <s> prepended, as Llama's."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=512,
    )


def build_model(config: BuildConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised Llama causal LM with tied embeddings (keeps the file small)."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(llama)


def pack(
    docs: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate tokenised documents and cut them into rows of `block_size`.

    Returns (ids, labels), each (n_rows, block_size); an incomplete last row is dropped.
    """
    ids = np.fromiter((t for x, _ in docs for t in x), dtype=np.int64)
    labels = np.fromiter((t for _, y in docs for t in y), dtype=np.int64)
    n_rows = len(ids) // block_size
    shape = (n_rows, block_size)
    return (
        torch.from_numpy(ids[: n_rows * block_size].reshape(shape)),
        torch.from_numpy(labels[: n_rows * block_size].reshape(shape)),
    )


def lr_at(step: int, config: BuildConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: LlamaForCausalLM,
    blocks: tuple[torch.Tensor, torch.Tensor],
    config: BuildConfig,
    gen: torch.Generator,
) -> float:
    """AdamW over random batches of packed (ids, labels) rows; returns the mean loss of
    the last 20 steps (target tokens only)."""
    ids, labels = blocks
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    model.train()
    recent: list[float] = []
    start = time.perf_counter()

    def batch_loss(batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=targets).loss

    step_loss = torch.compile(batch_loss) if config.compile else batch_loss
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        rows = torch.randint(len(ids), (config.batch_size,), generator=gen)
        loss = step_loss(ids[rows], labels[rows])  # rows: (batch, block_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FlexLoraError(f"build: pretraining loss is {loss.item()} at step {step}")
        recent = [*recent[-19:], loss.item()]
        if step % 50 == 0 or step == config.steps - 1:
            logger.info(
                "step %d/%d loss %.4f (%.0f s)",
                step,
                config.steps,
                loss.item(),
                time.perf_counter() - start,
            )
    return sum(recent) / len(recent)


def _portable_tokenizer_config(path: Path) -> None:
    """Name a tokenizer class every transformers version knows (4.x has no TokenizersBackend)."""
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def write_folder(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, meta: dict
) -> None:
    """Write the model folder atomically: everything goes to a temp folder, then one rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        special = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
        }
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        (tmp / "build_info.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for path in (
            tmp.iterdir()
        ):  # mkdtemp/safetensors create private files; a package ships readable ones
            path.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(config: BuildConfig, out: Path) -> float:
    """Generate, tokenise, pretrain and write the model; returns the final training loss."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # only the initialisation draws from the global generator
    rng = np.random.Generator(np.random.PCG64(config.seed))
    tokenizer_docs = corpus_documents(
        config.tokenizer_docs, rng, config.text_fraction, config.world_fraction
    )
    tokenizer = train_tokenizer([c + t for c, t in tokenizer_docs], config.vocab_size)
    # Enough documents for every step to see fresh rows (about one epoch).
    sample = tokenize_documents(tokenizer, tokenizer_docs[:500])
    avg_tokens = np.mean([len(ids) for ids, _ in sample])
    n_docs = int(config.steps * config.batch_size * config.block_size / avg_tokens) + 1
    docs = corpus_documents(n_docs, rng, config.text_fraction, config.world_fraction)
    blocks = pack(tokenize_documents(tokenizer, docs, config.loss_on_context), config.block_size)
    logger.info(
        "corpus: %d documents, %d rows of %d tokens, vocab %d",
        n_docs,
        len(blocks[0]),
        config.block_size,
        len(tokenizer),
    )
    model = build_model(config, tokenizer)
    logger.info("model: %d parameters", sum(p.numel() for p in model.parameters()))
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    loss = pretrain(model, blocks, config, gen)
    meta = {
        "build_config": asdict(config),
        "final_loss": round(loss, 4),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    write_folder(model, tokenizer, out, meta)
    return loss


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexlora.tools.build_tiny_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=BuildConfig.seed)
    parser.add_argument(
        "--steps", type=int, default=None, help="override the number of pretraining steps"
    )
    parser.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    parser.add_argument("--text-fraction", type=float, default=None, help="override text_fraction")
    parser.add_argument("--threads", type=int, default=None, help="override the torch threads")
    parser.add_argument(
        "--no-compile", action="store_true", help="train eagerly (no C++ compiler needed, slower)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, 2 steps: a seconds-long check of the code path",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = replace(SMOKE_CONFIG if args.smoke else BuildConfig(), seed=args.seed)
    if args.no_compile:
        config = replace(config, compile=False)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.lr is not None:
        config = replace(config, lr=args.lr)
    if args.text_fraction is not None:
        config = replace(config, text_fraction=args.text_fraction)
    if args.threads is not None:
        config = replace(config, threads=args.threads)
    loss = build(config, args.out)
    logger.info("final loss %.4f, wrote %s", loss, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
