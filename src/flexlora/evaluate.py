"""Score the global model on clients' held-out examples: Rouge-L, loss, per-category breakdown.

The engine calls `evaluate_clients` with the global model W0 + dW (a transformers causal LM,
or a peft model with the right adapter active) on the unseen clients' `test` split, the
paper's headline number, and on the seen clients' `eval` split.

Two modes (`eval.mode`):
- "generate": greedy decoding of at most `eval.max_new_tokens` tokens after the prompt,
  stopped at EOS, scored by Rouge-L against the reference. This is the real metric.
- "teacher-forced": the FlexLoRA authors' shortcut. One forward pass over prompt +
  reference; the argmax token at every response position is decoded and scored. Fast (no
  decoding loop), but each predicted token sees the *reference* prefix, not the model's
  own, so it flatters every method; it is not a generation metric.

Both modes also report the loss: the mean cross-entropy of the reference tokens (and the
EOS after them) given the prompt, token-weighted over the split. The same forward pass
serves the loss and the teacher-forced predictions.

Tokenisation: the scoring sequence is the training one (`flexlora.data.tokenize`: tokens
of `format_prompt(...) + format_target(...)`, then EOS, the prompt/target boundary at the
token holding the target's first character), so the eval loss is the training loss on
held-out text; generation starts from the tokens of the prompt alone. Rouge-L compares the
decoded prediction with the bare `example.output` (a custom template's suffix is left out).

Length: nothing is dropped (unlike `data.drop_overlong` in training): a prompt longer than
`data.max_length` is cut from the LEFT, keeping a leading BOS and the prompt's end, where
the response starts; the scoring sequence keeps the response whole when it can. Every
example cut in either pass is counted in `EvalResult.n_truncated`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from flexlora.config import DataConfig, EvalConfig
from flexlora.data.templates import format_prompt
from flexlora.data.tokenize import tokenize_examples
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError
from flexlora.metrics import rouge_l, weighted_mean

logger = logging.getLogger(__name__)

Split = Literal["eval", "test"]
ProgressFn = Callable[[int], None]
# Tokenise evaluation examples whole: they are cut here, from the left.
_NO_LIMIT = 2**31 - 1


@dataclass
class EvalResult:
    """Scores of one split over a set of clients. Rouge-L is on a 0–100 scale (the paper's).

    Weighting (the paper's client-size weighting): `rougeL` is Σ_k n_k · R_k / Σ_k n_k, each
    client's mean Rouge-L R_k weighted by its number of evaluated examples n_k. Since
    n_k · R_k is the sum of client k's per-example scores, this is exactly the plain mean over
    all evaluated examples; it is *not* the mean of client means (which would let a
    five-example client count as much as a five-hundred-example one). `per_category` is
    weighted the same way. `loss` is token-weighted: total cross-entropy over all scored
    response tokens divided by their number (per client and per category likewise).
    """

    split: str
    mode: Literal["generate", "teacher-forced"]
    rougeL: float
    loss: float
    n_examples: int
    n_clients: int
    n_tokens: int
    """Response tokens scored by the loss (reference tokens + one EOS per example)."""
    n_truncated: int
    """Examples whose prompt (or, rarely, reference) was cut to data.max_length tokens."""
    seconds: float
    per_client: dict[str, dict[str, Any]]
    """client id -> {rougeL, loss, n, n_tokens}."""
    per_category: dict[str, dict[str, Any]]
    """category -> {rougeL, loss, n_examples, n_clients, n_tokens}."""
    predictions: list[dict[str, Any]] | None = None
    """With keep_predictions: one {client, category, index, prediction, reference, rougeL} a
    scored example, in the clients' order and each client's example order."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats, ints, strings); `predictions` only when kept."""
        out = asdict(self)
        if self.predictions is None:
            del out["predictions"]
        return out


@dataclass(frozen=True)
class EncodedExample:
    """One example tokenised for evaluation."""

    prompt_ids: list[int]
    """The prompt for generation, at most max_length tokens (cut from the left)."""
    input_ids: list[int]
    """prompt + reference + EOS for the scoring pass, at most max_length tokens."""
    n_prompt: int
    """How many leading tokens of input_ids are prompt (not scored); always >= 1."""
    truncated: bool


@dataclass(frozen=True)
class TokenScores:
    """What one scoring forward pass tells about one example."""

    nll_sum: float
    """Σ -log p(token) over the scored response tokens."""
    n_tokens: int
    argmax_ids: list[int]
    """The argmax token at each response position (teacher-forced prediction)."""


@dataclass(frozen=True)
class ExampleRecord:
    """One scored example, the unit every aggregate is built from."""

    client_id: str
    category: str
    rouge_l: float
    nll_sum: float
    n_tokens: int


def _left_truncate(ids: list[int], limit: int, keep_prefix: int) -> list[int]:
    """Keep the last tokens of `ids` (at most `limit` in all), and its first `keep_prefix` (BOS)."""
    if len(ids) <= limit:
        return ids
    if limit <= keep_prefix:
        return ids[len(ids) - limit :]
    return ids[:keep_prefix] + ids[len(ids) - (limit - keep_prefix) :]


def _eos_token_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FlexLoraError(
            "evaluation needs a tokenizer with an EOS token (generation stops there)"
        )
    return int(eos)


def _pad_token_id(tokenizer: Any) -> int:
    """Pad with pad, else unk, else EOS: the value is masked out, any id will do."""
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise FlexLoraError("evaluation needs a tokenizer with a pad, unk or EOS token")


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    data_cfg: DataConfig,
    names: Sequence[str] | None = None,
) -> list[EncodedExample]:
    """Tokenise examples for evaluation: a generation prompt and a scoring sequence each.

    Scoring sequence: exactly the training tokenisation (`flexlora.data.tokenize`: the
    tokens of prompt + target with the tokenizer's special tokens, then EOS; the prompt
    ends before the token that holds the target's first character), so the eval loss is
    the training loss on unseen text. It is fitted into `data.max_length` differently
    from training, though: the target keeps priority (cut from the right only when it
    alone exceeds max_length - 1) and the prompt is cut from the LEFT, a leading BOS
    kept, because its end is what the answer depends on.

    Generation prompt: the tokens of the prompt alone (what the model has when it must
    answer), cut from the left to `data.max_length` the same way. `names` label the
    examples in error messages.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    # Tokenise whole: cutting is done here, from the left, not by the training rule.
    whole = replace(data_cfg, max_length=_NO_LIMIT, drop_overlong=False, train_on_inputs=False)
    scored = tokenize_examples(examples, tokenizer, whole)
    by_example = {int(k): j for j, k in enumerate(scored.example_index)}
    prompts = [format_prompt(e, data_cfg.template, data_cfg.custom_template) for e in examples]
    # verbose=False: we cut long prompts ourselves, the "longer than the maximum" warning is noise.
    prompt_batch = tokenizer(prompts, add_special_tokens=True, verbose=False)["input_ids"]
    max_length = data_cfg.max_length
    encoded = []
    for i, prompt_ids in enumerate(prompt_batch):
        name = names[i] if names is not None else f"example {i}"
        if i not in by_example:
            raise FlexLoraError(f"{name}: tokenisation leaves no target token to score")
        full = scored[by_example[i]]
        ids = full.input_ids.tolist()
        head, response = ids[: full.prompt_length], ids[full.prompt_length :]
        if not head or not prompt_ids:
            raise FlexLoraError(f"{name}: the prompt tokenises to no token at all")
        keep_prefix = 1 if bos is not None and head[0] == bos else 0
        generation_prompt = _left_truncate(list(prompt_ids), max_length, keep_prefix)
        # At least one prompt token stays: its logit predicts the first response token.
        kept_response = response[: max_length - 1]
        scoring_prompt = _left_truncate(head, max_length - len(kept_response), keep_prefix)
        truncated = (
            len(generation_prompt) < len(prompt_ids)
            or len(scoring_prompt) < len(head)
            or len(kept_response) < len(response)
        )
        encoded.append(
            EncodedExample(
                prompt_ids=generation_prompt,
                input_ids=scoring_prompt + kept_response,
                n_prompt=len(scoring_prompt),
                truncated=truncated,
            )
        )
    return encoded


def score_batch(
    model: Any, batch: Sequence[EncodedExample], *, pad_token_id: int, device: torch.device | str
) -> list[TokenScores]:
    """One forward pass over prompt + reference + EOS: per-example NLL sum and argmax tokens.

    Rows are right-padded so that every row's positions start at 0 without position ids;
    padding sits after the last scored token, so the causal mask keeps it out of every
    scored logit, and the attention mask says so too.
    """
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[i, : len(e.input_ids)] = 1
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).logits  # (B, T, V)
    scores = []
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        # The logit at position t predicts token t + 1, so response tokens n_prompt .. n-1
        # are predicted at positions n_prompt-1 .. n-2. At least float32 for the softmax
        # (bf16 logits would round the loss), float64 kept when the model runs in it.
        row = logits[i, e.n_prompt - 1 : n - 1]  # (R, V), R = n - n_prompt
        row = row.to(torch.promote_types(row.dtype, torch.float32))
        target = input_ids[i, e.n_prompt : n].to(row.device)  # (R,)
        nll = F.cross_entropy(row, target, reduction="sum")
        scores.append(TokenScores(float(nll), n - e.n_prompt, row.argmax(dim=-1).tolist()))
    return scores


def _greedy_config(
    *, max_new_tokens: int, pad_token_id: int, eos_token_id: int
) -> GenerationConfig:
    """Plain greedy decoding: every logits processor that could move the argmax is switched off.

    transformers fills the fields left unset here from the model's own generation_config,
    so the ones that would change greedy tokens (sampling, beams, repetition penalties, a
    minimum length) are set explicitly.
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


def _until_eos(ids: list[int], eos_token_id: int) -> list[int]:
    return ids[: ids.index(eos_token_id)] if eos_token_id in ids else ids


def _left_pad(
    prompts: Sequence[list[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, width) of LEFT-padded prompts, built on the host.

    Every prompt ends in the last column, so all rows continue from the same position.
    We pad the ids ourselves, so the tokenizer's padding_side is never read or changed.
    """
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)  # (B, W)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, W)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    return input_ids, attention_mask, width


def _generate_batch_hf(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    device: torch.device | str,
) -> list[list[int]]:
    """`generate_batch` through transformers' `model.generate`: the reference the lean loop
    must match token for token (kept for the equality tests and benchmarks/generation.py)."""
    input_ids, attention_mask, width = _left_pad(prompts, pad_token_id)
    config = _greedy_config(
        max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id
    )
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
    )  # (B, W + new)
    # Rows that stopped early are filled with pad after their EOS: cut at the first EOS.
    return [_until_eos(row, eos_token_id) for row in output[:, width:].tolist()]


# How many decoding steps pass between two reads of "have all rows produced EOS?" on an
# accelerator. Reading a device flag on the host waits for every queued kernel, so a
# check per token would stall the pipeline once per token; every 4 tokens costs at most 3
# wasted steps (of padding, cut off anyway) after the last row finishes. On the CPU
# kernels run synchronously, a read costs nothing and a wasted step costs a forward pass,
# so the check runs every step there.
_STOP_CHECK_EVERY = 4


def _forward_parameters(model: Any) -> set[str]:
    """Keyword arguments the underlying transformers model's forward takes by name.

    A peft model's forward takes **kwargs and passes them on, so look at its base model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _returned_cache(output: Any) -> tuple[str, Any]:
    """(keyword, value) of the KV cache a forward with use_cache=True returned.

    transformers 5 renamed `past_key_values` to `cache`; whichever name the output uses is
    the name the next forward takes it back under.
    """
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return name, value
    raise FlexLoraError("generation needs a model that returns a KV cache with use_cache=True")


def generate_batch(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    device: torch.device | str,
) -> list[list[int]]:
    """Greedy continuations of a batch of token prompts: the new tokens of each, EOS excluded.

    The same tokens as transformers' `model.generate` with `_greedy_config` (see
    `_generate_batch_hf`), without its per-step bookkeeping: one prefill forward over the
    left-padded prompts, then one cached forward per new token, argmax on the device. It
    feeds the model what generate feeds it, so the arithmetic is the same to the bit:
    position ids from the attention mask (cumsum - 1, padding at 0), no mask at all when no
    row is padded, a mask of ones appended for the new tokens (finished rows included), and
    `logits_to_keep=1` where the model takes it (only the last position's logits).
    Rows that produced EOS keep emitting pad; all rows finished is read on the host only
    every `_STOP_CHECK_EVERY` steps on an accelerator (every step on the CPU).
    """
    input_ids, attention_mask, width = _left_pad(prompts, pad_token_id)
    batch = len(prompts)
    params = _forward_parameters(model)
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    # Equal prompt lengths: no padding to hide, and generate drops the mask then (which
    # lets attention take its unmasked causal path); so do we, known here without a sync.
    padded = any(len(p) < width for p in prompts)
    # Every column the sequence will reach: prompt mask, then ones for the new tokens
    # (generate appends a one a step for every row, finished or not).
    full_mask = torch.cat(
        [attention_mask, torch.ones((batch, max_new_tokens), dtype=torch.long)], dim=1
    ).to(device)  # (B, W + N)
    positions = None
    if "position_ids" in params:
        # Each row counts positions from its first real token; left padding gets 0.
        prompt_positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, W)
        # Step s (0-based) feeds the token generated at step s - 1, at the position after
        # the prompt's last one plus s - 1.
        steps = torch.arange(1, max_new_tokens, dtype=torch.long)  # (N - 1,)
        next_positions = prompt_positions[:, -1:] + steps  # (B, N - 1)
        positions = torch.cat([prompt_positions, next_positions], dim=1).to(device)  # (B, W+N-1)

    def forward(ids: torch.Tensor, start: int, stop: int, **kwargs: Any) -> Any:
        """The model on `ids` (B, stop - start), the sequence's columns start .. stop - 1."""
        if padded:
            kwargs["attention_mask"] = full_mask[:, :stop]  # (B, stop)
        if positions is not None:
            kwargs["position_ids"] = positions[:, start:stop]  # (B, stop - start)
        return model(input_ids=ids, use_cache=True, return_dict=True, **kwargs, **extra)

    new_tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    pad = torch.tensor(pad_token_id, dtype=torch.long, device=device)
    check_every = 1 if torch.device(device).type == "cpu" else _STOP_CHECK_EVERY
    done = 0
    # generate runs under no_grad too: a peft model's LoRA factors require grad.
    with torch.no_grad():
        output = forward(input_ids.to(device), 0, width)
        for step in range(max_new_tokens):
            if step > 0:
                name, cache = _returned_cache(output)
                last = new_tokens[:, step - 1 : step]  # (B, 1)
                output = forward(last, width + step - 1, width + step, **{name: cache})
            logits = output.logits[:, -1]  # (B, V)
            # generate takes the argmax of a float32 copy; widening keeps every order and
            # tie (the first maximum wins in both), so the token is the same.
            token = torch.where(finished, pad, logits.argmax(dim=-1))  # (B,)
            new_tokens[:, step] = token
            finished |= token == eos_token_id
            done = step + 1
            if done % check_every == 0 and bool(finished.all()):
                break
    del output  # the cache and the prefill's logits, before the host copy
    return [_until_eos(row, eos_token_id) for row in new_tokens[:, :done].tolist()]


def _group_stats(records: Sequence[ExampleRecord]) -> dict[str, Any]:
    n_tokens = sum(r.n_tokens for r in records)
    return {
        "rougeL": sum(r.rouge_l for r in records) / len(records),
        "loss": sum(r.nll_sum for r in records) / n_tokens,
        "n": len(records),
        "n_tokens": n_tokens,
    }


def summarise(
    records: Sequence[ExampleRecord],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(overall, per_client, per_category) from scored examples; see EvalResult for the weights.

    overall Rouge-L is computed the paper's way, Σ_k n_k · R_k / Σ_k n_k over the clients'
    means R_k, which equals the mean over all examples; loss is token-weighted throughout.
    """
    if not records:
        raise FlexLoraError("summarise: no scored example")
    by_client: dict[str, list[ExampleRecord]] = defaultdict(list)
    by_category: dict[str, list[ExampleRecord]] = defaultdict(list)
    for r in records:
        by_client[r.client_id].append(r)
        by_category[r.category].append(r)
    per_client = {cid: _group_stats(rs) for cid, rs in by_client.items()}
    per_category = {}
    for category, rs in sorted(by_category.items()):
        stats = _group_stats(rs)
        per_category[category] = {
            "rougeL": stats["rougeL"],
            "loss": stats["loss"],
            "n_examples": stats["n"],
            "n_clients": len({r.client_id for r in rs}),
            "n_tokens": stats["n_tokens"],
        }
    clients = list(per_client.values())
    overall = {
        "rougeL": weighted_mean([c["rougeL"] for c in clients], [c["n"] for c in clients]),
        "loss": sum(r.nll_sum for r in records) / sum(r.n_tokens for r in records),
        "n_examples": len(records),
        "n_clients": len(per_client),
        "n_tokens": sum(r.n_tokens for r in records),
    }
    return overall, per_client, per_category


def selected_examples(
    clients: Mapping[str, ClientData], split: Split, max_per_client: int | None
) -> list[tuple[str, int, Example]]:
    """(client id, index, example) for every example scored: the first `max_per_client` of each."""
    if split not in ("eval", "test"):
        raise FlexLoraError(f"evaluation split must be 'eval' or 'test', got {split!r}")
    chosen: list[tuple[str, int, Example]] = []
    for cid, client in clients.items():
        examples = getattr(client, split)
        if max_per_client is not None:
            examples = examples[:max_per_client]
        chosen.extend((cid, i, ex) for i, ex in enumerate(examples))
    return chosen


def count_examples(clients: Mapping[str, ClientData], split: Split, eval_cfg: EvalConfig) -> int:
    """How many examples `evaluate_clients` will score: the total for a progress bar."""
    return len(selected_examples(clients, split, eval_cfg.max_examples_per_client))


def evaluate_clients(
    model: Any,
    tokenizer: Any,
    clients: Mapping[str, ClientData],
    split: Split,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: ProgressFn | None = None,
    keep_predictions: bool = False,
) -> EvalResult:
    """Score `model` on the `split` examples of `clients` (see the module docstring).

    The model must already sit on `device`; inputs are moved there. It runs in eval mode
    under torch.inference_mode, and every module's training flag is restored afterwards.
    Examples are sorted by length (longest first, so an out-of-memory shows at once) and
    batched by eval.batch_size; results are mapped back to each client's order.
    `progress(done)` is called after every batch with the number of examples finished so
    far, up to `count_examples(...)`. Clients with no example in the split are left out
    (and not counted in n_clients); raises FlexLoraError when no client has any.
    """
    started = time.perf_counter()
    chosen = selected_examples(clients, split, eval_cfg.max_examples_per_client)
    if not chosen:
        raise FlexLoraError(
            f"no {split!r} examples to evaluate in the {len(clients)} clients given"
        )
    eos_token_id, pad_token_id = _eos_token_id(tokenizer), _pad_token_id(tokenizer)
    encoded = encode_examples(
        tokenizer,
        [ex for _, _, ex in chosen],
        data_cfg,
        names=[f"client {cid}, {split} example {i}" for cid, i, _ in chosen],
    )
    generate = eval_cfg.mode == "generate"

    def length(i: int) -> int:
        return len(encoded[i].prompt_ids) if generate else len(encoded[i].input_ids)

    order = sorted(range(len(encoded)), key=lambda i: (-length(i), i))
    scores: list[TokenScores | None] = [None] * len(encoded)
    predicted_ids: list[list[int] | None] = [None] * len(encoded)

    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), eval_cfg.batch_size):
                batch = order[start : start + eval_cfg.batch_size]
                batch_scores = score_batch(
                    model, [encoded[i] for i in batch], pad_token_id=pad_token_id, device=device
                )
                if generate:
                    batch_predictions = generate_batch(
                        model,
                        [encoded[i].prompt_ids for i in batch],
                        pad_token_id=pad_token_id,
                        eos_token_id=eos_token_id,
                        max_new_tokens=eval_cfg.max_new_tokens,
                        device=device,
                    )
                else:
                    batch_predictions = [s.argmax_ids for s in batch_scores]
                for i, token_scores, ids in zip(
                    batch, batch_scores, batch_predictions, strict=True
                ):
                    scores[i], predicted_ids[i] = token_scores, ids
                if progress is not None:
                    progress(start + len(batch))
    finally:
        for module, training in flags:
            module.training = training

    records: list[ExampleRecord] = []
    predictions: list[dict[str, Any]] = []
    for (cid, index, example), s, new_ids in zip(chosen, scores, predicted_ids, strict=True):
        if s is None or new_ids is None:  # every index is in exactly one batch
            raise RuntimeError(f"internal: client {cid} example {index} was never scored")
        # skip_special_tokens drops pad and, in teacher-forced mode, the EOS position's argmax.
        text = tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        score = rouge_l(text, example.output)
        records.append(ExampleRecord(cid, example.category, score, s.nll_sum, s.n_tokens))
        if keep_predictions:
            predictions.append(
                {
                    "client": cid,
                    "category": example.category,
                    "index": index,
                    "prediction": text,
                    "reference": example.output,
                    "rougeL": score,
                }
            )
    overall, per_client, per_category = summarise(records)
    result = EvalResult(
        split=split,
        mode=eval_cfg.mode,
        rougeL=overall["rougeL"],
        loss=overall["loss"],
        n_examples=overall["n_examples"],
        n_clients=overall["n_clients"],
        n_tokens=overall["n_tokens"],
        n_truncated=sum(e.truncated for e in encoded),
        seconds=time.perf_counter() - started,
        per_client=per_client,
        per_category=per_category,
        predictions=predictions if keep_predictions else None,
    )
    logger.info(
        "%s split (%s): Rouge-L %.2f, loss %.4f, %d examples of %d clients, %d truncated, %.1f s",
        split,
        eval_cfg.mode,
        result.rougeL,
        result.loss,
        result.n_examples,
        result.n_clients,
        result.n_truncated,
        result.seconds,
    )
    return result
