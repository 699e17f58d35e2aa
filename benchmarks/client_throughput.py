"""Client training throughput: flexlora's client step against a bare transformers + PEFT loop.

    .venv/bin/python benchmarks/client_throughput.py [--rank 8] [--clients 2] [--steps 10]
        [--batch-size 8] [--repeats 7] [--threads 2]

ours:  the engine's client step as flexlora.simulation runs it: an AdapterHost holding one
       adapter per rank class (the default classes, ranks 1 2 4 8, plus --rank), the
       client's start factors loaded into its class's adapter (`AdapterHost.load`), that
       adapter activated, `flexlora.client.train_client`, the trained factors read back
       (`AdapterHost.read`).
bare:  `peft.get_peft_model` with one adapter of the same LoraConfig (rank, alpha, dropout,
       target modules), the same start factors copied in, then a plain loop: AdamW, forward,
       backward, clip_grad_norm_, step.

Both sides see the same model (a fresh load each), the same batches in the same order
(the same seeded permutations, right-padded to the batch's longest example), the same
optimizer and hyperparameters, and the same dropout draws (each repeat runs under
`torch.random.fork_rng` with the same seed), so their mean losses must agree: the script
checks it, so the speed is not bought with different work. Tokens are the non-padding
input tokens of every batch.

One repeat trains `--clients` synthetic suite clients one after another (`--steps` steps
of `--batch-size` each). After a warm-up of each side, repeats alternate ours / bare
(the order flips every repeat) to spread the noise of a shared machine over both; the
median tokens/s and the min-max spread are printed, with CPU seconds beside the wall
seconds. Models: the shipped `builtin:flexlora-tiny` and, when ../shared/assets holds it,
stories260K.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexlora.adapters import AdapterHost, initial_factors, target_module_shapes
from flexlora.assets import BUILTIN_MODELS, resolve_model_path
from flexlora.client import train_client
from flexlora.config import DataConfig, FederationConfig, LoraSettings
from flexlora.data.synthetic import build_synthetic_suite
from flexlora.data.tokenize import IGNORE_INDEX, TokenizedSplit, tokenize_client
from flexlora.lora import LoraFactors, lora_scaling

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "../shared/assets"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENGINE_CLASS_RANKS = (1, 2, 4, 8)  # ranks.types' default: the adapters a default run's host holds
SEED = 0


@dataclass
class Timing:
    wall: float
    cpu: float
    tokens: int
    loss: float


def load(path: str) -> tuple[Any, Any]:
    """A float32 causal LM with frozen weights, and its tokenizer (unk pads when no pad)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.requires_grad_(False)
    return model, tokenizer


def batch_orders(
    n: int, batch_size: int, count: int, generator: torch.Generator
) -> list[list[int]]:
    """`count` batches from fresh permutations, epoch by epoch (what train_client draws)."""
    batches: list[list[int]] = []
    while len(batches) < count:
        order = torch.randperm(n, generator=generator).tolist()
        batches.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:count]


def pad_batch(split: TokenizedSplit, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the examples `rows` of `split`: each output (batch, longest) int64."""
    examples = [split[i] for i in rows]
    ids = torch.nn.utils.rnn.pad_sequence(
        [e.input_ids for e in examples], batch_first=True, padding_value=pad_id
    )
    labels = torch.nn.utils.rnn.pad_sequence(
        [e.labels for e in examples], batch_first=True, padding_value=IGNORE_INDEX
    )
    mask = torch.nn.utils.rnn.pad_sequence(
        [torch.ones_like(e.input_ids) for e in examples], batch_first=True, padding_value=0
    )
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class Ours:
    """The engine's client step over an AdapterHost."""

    def __init__(self, path: str, rank: int, lora: LoraSettings, fed: FederationConfig) -> None:
        model, self.tokenizer = load(path)
        shapes = target_module_shapes(model, TARGETS)
        classes = {
            f"rank-{r}": {n: min(r, *shapes[n]) for n in shapes}
            for r in sorted({*ENGINE_CLASS_RANKS, rank})
        }
        self.key = f"rank-{rank}"
        self.host = AdapterHost(model, TARGETS, lora, classes)
        self.fed = fed

    def client_step(self, start: dict[str, LoraFactors], data: TokenizedSplit, seed: int) -> Timing:
        self.host.load(self.key, start)
        params = self.host.activate(self.key)
        result = train_client(
            self.host.model,  # type: ignore[arg-type]
            params,
            data,
            self.fed,
            pad_id=int(self.tokenizer.pad_token_id),
            generator=torch.Generator().manual_seed(seed),
            device=torch.device("cpu"),
        )
        self.host.read(self.key)
        return Timing(0.0, 0.0, result.tokens, result.loss)


class Bare:
    """One PEFT adapter and a plain AdamW loop: what a user would write without flexlora."""

    def __init__(self, path: str, rank: int, lora: LoraSettings, fed: FederationConfig) -> None:
        model, self.tokenizer = load(path)
        shapes = target_module_shapes(model, TARGETS)
        ranks = {min(rank, *s) for s in shapes.values()}
        if len(ranks) != 1:
            raise SystemExit(
                f"--rank {rank} exceeds a module's size on {path}: pick a smaller rank"
            )
        config = LoraConfig(
            r=ranks.pop(),
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, config)
        self.layers = {n: m for n, m in self.model.base_model.model.named_modules() if n in shapes}
        self.fed = fed

    def client_step(self, start: dict[str, LoraFactors], data: TokenizedSplit, seed: int) -> Timing:
        fed = self.fed
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.lora_A["default"].weight.copy_(start[name].A)
                layer.lora_B["default"].weight.copy_(start[name].B)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=fed.lr, weight_decay=fed.weight_decay)
        steps = fed.local_steps or 1
        order = batch_orders(len(data), fed.batch_size, steps, torch.Generator().manual_seed(seed))
        pad_id = int(self.tokenizer.pad_token_id)
        self.model.train()
        total, tokens = 0.0, 0
        for rows in order:
            batch = pad_batch(data, rows, pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss = self.model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, fed.max_grad_norm or float("inf"))
            optimizer.step()
            total += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        return Timing(0.0, 0.0, tokens, total / steps)


def run_side(
    side: Ours | Bare, starts: list[dict[str, LoraFactors]], clients: list[TokenizedSplit]
) -> Timing:
    """Train every client once, from its start factors; dropout draws seeded per client."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens, losses = 0, []
    for index, (start, data) in enumerate(zip(starts, clients, strict=True)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + index)  # scoped: dropout masks equal on both sides
            t = side.client_step(start, data, SEED + index)
        tokens += t.tokens
        losses.append(t.loss)
    return Timing(
        time.perf_counter() - wall, time.process_time() - cpu, tokens, statistics.fmean(losses)
    )


def describe(label: str, runs: list[Timing]) -> tuple[float, str]:
    rates = [r.tokens / r.wall for r in runs]
    cpu_rates = [r.tokens / r.cpu for r in runs]
    med = statistics.median(rates)
    text = (
        f"  {label:5s} {med:9.0f} tokens/s wall (spread {min(rates):.0f}-{max(rates):.0f}), "
        f"{statistics.median(cpu_rates):9.0f} tokens/CPU-s, "
        f"{statistics.median(r.wall for r in runs):.2f} s a repeat"
    )
    return med, text


def bench_model(name: str, path: str, args: argparse.Namespace) -> float:
    """Benchmark one model; returns the ratio ours / bare of the median wall tokens/s."""
    lora = LoraSettings()
    fed = FederationConfig(local_steps=args.steps, batch_size=args.batch_size, max_grad_norm=1.0)
    ours, bare = Ours(path, args.rank, lora, fed), Bare(path, args.rank, lora, fed)
    tokenizer = ours.tokenizer
    max_length = min(256, int(getattr(tokenizer, "model_max_length", 256) or 256))
    suite = build_synthetic_suite({"suite": "families"}, SEED)  # 40 clients, 64 train examples each
    ids = suite.seen_ids[: args.clients]
    data_cfg = DataConfig(max_length=max_length)
    clients = [tokenize_client(suite.clients[c], "train", tokenizer, data_cfg) for c in ids]

    shapes = ours.host.shapes
    rank_of = {n: min(args.rank, *shapes[n]) for n in shapes}
    scalings = {n: lora_scaling(lora.alpha, r) for n, r in rank_of.items()}
    gen = torch.Generator().manual_seed(SEED)
    starts = [initial_factors(shapes, rank_of, scalings, gen) for _ in clients]
    # B = 0 leaves the first step's gradient of A at zero; a small random B makes every
    # step exercise both factors, as in later rounds.
    for s in starts:
        for f in s.values():
            f.B.normal_(0.0, 0.01, generator=gen)

    lengths = [int(n) for c in clients for n in c.lengths]
    print(
        f"\n{name}: {path}\n  clients {', '.join(ids)}; {sum(map(len, clients))} examples, "
        f"{statistics.mean(lengths):.0f} tokens mean ({min(lengths)}-{max(lengths)}), "
        f"max_length {max_length}; "
        f"rank {args.rank}, {args.steps} steps x batch {args.batch_size} per client"
    )

    run_side(ours, starts, clients)  # warm-up: allocator, autograd graph, lazy imports
    run_side(bare, starts, clients)
    ours_runs: list[Timing] = []
    bare_runs: list[Timing] = []
    for repeat in range(args.repeats):
        pair: list[tuple[Callable[[], Timing], list[Timing]]] = [
            (lambda: run_side(ours, starts, clients), ours_runs),
            (lambda: run_side(bare, starts, clients), bare_runs),
        ]
        for fn, sink in pair if repeat % 2 == 0 else reversed(pair):
            sink.append(fn())

    if ours_runs[0].tokens != bare_runs[0].tokens:
        raise SystemExit(
            f"token counts differ: ours {ours_runs[0].tokens}, bare {bare_runs[0].tokens}"
        )
    loss_gap = max(abs(o.loss - b.loss) for o, b in zip(ours_runs, bare_runs, strict=True))
    ours_rate, ours_text = describe("ours", ours_runs)
    bare_rate, bare_text = describe("bare", bare_runs)
    pair_ratios = [
        (o.tokens / o.wall) / (b.tokens / b.wall) for o, b in zip(ours_runs, bare_runs, strict=True)
    ]
    cpu_ratio = statistics.median(b.cpu for b in bare_runs) / statistics.median(
        o.cpu for o in ours_runs
    )
    print(ours_text)
    print(bare_text)
    print(
        f"  tokens a repeat {ours_runs[0].tokens}; mean loss ours {ours_runs[0].loss:.5f} "
        f"bare {bare_runs[0].loss:.5f} (largest gap over repeats {loss_gap:.1e})"
    )
    ratio = ours_rate / bare_rate
    print(
        f"  ratio ours/bare: {ratio:.3f} (median wall tokens/s; per-pair ratios "
        f"{min(pair_ratios):.3f}-{max(pair_ratios):.3f}, "
        f"median {statistics.median(pair_ratios):.3f}; "
        f"CPU-time ratio {cpu_ratio:.3f}); goal >= 0.95"
    )
    if loss_gap > 1e-4:
        print("  WARNING: the losses differ: the two sides did not do the same work")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2, help="synthetic clients trained a repeat")
    parser.add_argument("--steps", type=int, default=5, help="local steps a client")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--assets", type=Path, default=ASSETS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    models: list[tuple[str, str]] = []
    stories = args.assets / "models/stories260K"
    if (BUILTIN_MODELS["flexlora-tiny"] / "model.safetensors").is_file():
        models.append(("builtin:flexlora-tiny", resolve_model_path("builtin:flexlora-tiny")))
    else:
        print(
            f"note: {BUILTIN_MODELS['flexlora-tiny']} is incomplete: stories260K stands in for it"
        )
    if (stories / "config.json").is_file():
        models.append(("stories260K", str(stories.resolve())))
    else:
        print(f"note: {stories} not found: stories260K skipped")
    if not models:
        raise SystemExit(
            "no model to benchmark: neither the builtin model nor stories260K is present"
        )
    ratios = {name: bench_model(name, path, args) for name, path in models}
    print(
        "\nsummary (ours/bare, median wall tokens/s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
    )


if __name__ == "__main__":
    main()
