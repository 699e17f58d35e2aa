"""Evaluation: Rouge-L values, client-size weighting, greedy generation against an unbatched
reference loop and against transformers' generate, teacher-forced argmax, float64 loss,
per-category sums, truncation, flags.

Everything runs on a tiny random Llama and a word-level tokenizer built here (no hub).
Exactness tests use a float64 model, so batched and unbatched passes cannot disagree on
an argmax through rounding.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from engine_fixtures import force_eos_row_by_row, make_tiny_model
from flexlora.config import DataConfig, EvalConfig
from flexlora.data.synthetic import build_synthetic_suite
from flexlora.data.templates import format_prompt
from flexlora.data.tokenize import tokenize_examples
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError
from flexlora.evaluate import (
    ExampleRecord,
    _generate_batch_hf,
    count_examples,
    encode_examples,
    evaluate_clients,
    generate_batch,
    summarise,
)
from flexlora.metrics import rouge_l, weighted_mean

WORDS = [
    *("the", "cat", "sat", "on", "a", "mat", "dog", "ran", "red", "blue", "green", "big"),
    *("small", "fast", "slow", "yes", "no", "one", "two", "three", "apple", "tree", "house"),
    *("car", "what", "is", "colour", "animal", "name", "count", "say"),
]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS: prepends BOS to every text encoded with special tokens."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def make_model(vocab_size: int, dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        initializer_range=0.3,  # peaked logits: varied greedy tokens, no near-ties
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_model(len(tokenizer))


def ex(instruction: str, inp: str, output: str, category: str) -> Example:
    return Example(instruction=instruction, input=inp, output=output, category=category)


@pytest.fixture(scope="module")
def clients() -> dict[str, ClientData]:
    """Three clients of sizes 3, 1, 2 over two categories; prompts of varied lengths."""
    return {
        "a": ClientData(
            "a",
            train=[],
            test=[
                ex("name the animal", "the cat sat on a mat", "cat", "animals"),
                ex("say yes or no", "dog", "yes", "animals"),
                ex("count", "one two three apple tree house car", "three", "animals"),
            ],
        ),
        "b": ClientData(
            "b",
            train=[],
            test=[ex("what is the colour", "a red apple", "red apple", "colours")],
        ),
        "c": ClientData(
            "c",
            train=[],
            test=[
                ex("name the animal", "a big dog ran fast", "the dog", "animals"),
                ex("say the animal", "small cat", "a small cat sat", "animals"),
            ],
            eval=[ex("say", "tree", "tree", "plants")],
        ),
    }


def data_cfg(max_length: int = 256) -> DataConfig:
    return DataConfig(template="alpaca", max_length=max_length)


def all_examples(clients: dict[str, ClientData]) -> list[tuple[str, Example]]:
    return [(cid, e) for cid, c in clients.items() for e in c.test]


def greedy_reference(model: LlamaForCausalLM, prompt: list[int], max_new: int) -> list[int]:
    """Unbatched greedy decoding without cache or padding: the plainest possible loop."""
    ids = list(prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,)
            token = int(logits.argmax())
            if token == EOS:
                break
            new.append(token)
            ids.append(token)
    return new


def reference_sequence(tok: PreTrainedTokenizerFast, e: Example) -> tuple[list[int], int]:
    """prompt (with BOS) + output + EOS, untruncated, and the prompt length."""
    prompt = tok(format_prompt(e, "alpaca", None))["input_ids"]
    response = tok(e.output, add_special_tokens=False)["input_ids"]
    return [*prompt, *response, EOS], len(prompt)


# --- Rouge-L -------------------------------------------------------------------------------


def test_rouge_l_matches_hand_computed_lcs() -> None:
    # ref: the cat sat on the mat (6), pred: the cat on a mat (5); LCS "the cat on mat" = 4.
    p, r = 4 / 5, 4 / 6
    assert rouge_l("the cat on a mat", "the cat sat on the mat") == pytest.approx(
        100 * 2 * p * r / (p + r)
    )
    # Order matters for the LCS: "mat the" vs "the mat" share one token in order.
    assert rouge_l("mat the", "the mat") == pytest.approx(50.0)
    assert rouge_l("The Cat!", "the cat") == pytest.approx(
        100.0
    )  # lower-cased, punctuation dropped
    assert rouge_l("running", "runs") == pytest.approx(100.0)  # Porter stemmer: both "run"
    assert rouge_l("running", "runs", use_stemmer=False) == 0.0
    assert rouge_l("", "the cat") == 0.0
    # Documented limit of the default (SNI English) scorer: non-ASCII words vanish.
    assert rouge_l("日本語", "日本語") == 0.0


def test_weighted_mean_and_bad_weights() -> None:
    assert weighted_mean([100.0, 0.0], [3, 1]) == pytest.approx(75.0)
    with pytest.raises(FlexLoraError):
        weighted_mean([1.0], [0])
    with pytest.raises(FlexLoraError):
        weighted_mean([1.0, 2.0], [1])


# --- aggregation ---------------------------------------------------------------------------


def test_summarise_weights_clients_by_size() -> None:
    # Client a: three perfect answers; client b: one miss. Mean of client means would be 50.
    records = [
        ExampleRecord("a", "x", 100.0, nll_sum=1.0, n_tokens=1),
        ExampleRecord("a", "x", 100.0, nll_sum=2.0, n_tokens=2),
        ExampleRecord("a", "y", 100.0, nll_sum=3.0, n_tokens=3),
        ExampleRecord("b", "y", 0.0, nll_sum=10.0, n_tokens=4),
    ]
    overall, per_client, per_category = summarise(records)
    assert overall["rougeL"] == pytest.approx(75.0)  # == (100 + 100 + 100 + 0) / 4
    assert overall["loss"] == pytest.approx(16.0 / 10.0)  # token-weighted
    assert (overall["n_examples"], overall["n_clients"], overall["n_tokens"]) == (4, 2, 10)
    assert per_client["a"] == {"rougeL": 100.0, "loss": 1.0, "n": 3, "n_tokens": 6}
    assert per_client["b"] == {"rougeL": 0.0, "loss": 2.5, "n": 1, "n_tokens": 4}
    assert per_category["x"] == {
        "rougeL": 100.0,
        "loss": 1.0,
        "n_examples": 2,
        "n_clients": 1,
        "n_tokens": 3,
    }
    assert per_category["y"]["rougeL"] == pytest.approx(50.0)
    assert per_category["y"]["loss"] == pytest.approx(13.0 / 7.0)
    assert per_category["y"]["n_clients"] == 2


# --- tokenisation and truncation -----------------------------------------------------------


def test_encode_examples_truncates_from_the_left_keeping_bos(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    w = {word: i + len(SPECIALS) for i, word in enumerate(WORDS)}
    # The prompt is the instruction and a space; the target the bare output.
    cfg = DataConfig(template="custom", custom_template="{instruction} {output}", max_length=8)
    examples = [
        ex("the cat sat", "", "a mat", "x"),
        ex("the cat sat on the mat", "", "a dog", "x"),
        ex("one two three apple tree house car red blue green", "", "no", "x"),
        ex("yes", "", "a b c d e f g h", "x"),
    ]
    fits, long_scoring, long_prompt, long_ref = encode_examples(tokenizer, examples, cfg)

    # 1 + 3 prompt tokens, 2 + EOS response tokens: 7 <= 8, nothing cut; the scoring
    # sequence is the training one.
    assert fits.prompt_ids == [BOS, w["the"], w["cat"], w["sat"]]
    assert fits.input_ids == [BOS, w["the"], w["cat"], w["sat"], w["a"], w["mat"], EOS]
    assert (fits.n_prompt, fits.truncated) == (4, False)
    trained = tokenize_examples(examples[:1], tokenizer, cfg)[0]
    assert fits.input_ids == trained.input_ids.tolist()
    assert fits.n_prompt == trained.prompt_length

    # The 7-token prompt fits for generation; prompt + 3 response tokens does not: the
    # scoring prompt keeps BOS and its last 4 tokens (training would cut the end instead).
    assert long_scoring.prompt_ids == tokenizer(examples[1].instruction)["input_ids"]
    assert long_scoring.input_ids == [
        *(BOS, w["sat"], w["on"], w["the"], w["mat"]),
        *(w["a"], w["dog"], EOS),
    ]
    assert (long_scoring.n_prompt, long_scoring.truncated) == (5, True)

    # An 11-token prompt: BOS + its last 7 tokens for generation.
    last_seven = ("apple", "tree", "house", "car", "red", "blue", "green")
    assert long_prompt.prompt_ids == [BOS, *[w[t] for t in last_seven]]
    assert long_prompt.truncated

    # A reference longer than max_length - 1: the response is cut from the right and only
    # the last prompt token (which predicts the first response token) stays.
    assert long_ref.n_prompt == 1 and len(long_ref.input_ids) == 8
    assert long_ref.input_ids[:2] == [w["yes"], w["a"]]
    assert long_ref.truncated


def test_n_truncated_counts_every_cut_example(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    lengths = [len(reference_sequence(tokenizer, e)[0]) for _, e in all_examples(clients)]
    # A limit in the middle: prompt + response + EOS overflows for some examples only (the
    # template's length depends on data.templates, so it is measured, not assumed).
    max_length = sorted(lengths)[len(lengths) // 2]
    expected = sum(n > max_length for n in lengths)
    assert 0 < expected < len(lengths), "the fixture should mix cut and whole examples"
    for mode in ("generate", "teacher-forced"):
        result = evaluate_clients(
            model,
            tokenizer,
            clients,
            "test",
            data_cfg(max_length),
            EvalConfig(mode=mode, max_new_tokens=3, batch_size=4),
            device="cpu",
        )
        assert result.n_truncated == expected


# --- generation ----------------------------------------------------------------------------


def test_generate_batch_equals_unbatched_greedy_loop(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = [
        tokenizer(t)["input_ids"]
        for t in [
            "the cat",
            "one two three apple tree house car red",
            "yes no",
            "a big small dog ran",
        ]
    ]
    free = [greedy_reference(model, p, 6) for p in prompts]
    assert len({tuple(f) for f in free}) > 1, "the tiny model should not answer every prompt alike"
    got = generate_batch(
        model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6, device="cpu"
    )
    assert got == free
    # Stopping: make a token the model does produce mid-answer the EOS, so rows stop at
    # different steps and the batch carries padding after the finished ones.
    stop = free[1][2]
    stopped = [f[: f.index(stop)] if stop in f else f for f in free]
    got = generate_batch(
        model, prompts, pad_token_id=PAD, eos_token_id=stop, max_new_tokens=6, device="cpu"
    )
    assert got == stopped
    assert len({len(s) for s in stopped}) > 1


# --- the decoding loop against transformers' generate --------------------------------------
# generate_batch is a hand-written greedy loop; _generate_batch_hf is the model.generate path
# it replaced. They must agree token for token in float32, where any difference in what the
# model is fed (positions, mask, cache, which logits are kept) would show up in the argmax.


def make_gpt2(vocab_size: int) -> GPT2LMHeadModel:
    """A tiny random GPT-2 in float32: learned absolute positions, fused qkv, its own cache."""
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def float32_model(request: pytest.FixtureRequest, tokenizer: PreTrainedTokenizerFast) -> Any:
    if request.param == "llama":
        return make_model(len(tokenizer), torch.float32)
    return make_gpt2(len(tokenizer))


GEN_TEXTS = [
    "the cat",
    "one two three apple tree house car red",
    "yes no",
    "a big small dog ran",
    "what",
]


def both_paths(model: Any, prompts: list[list[int]], **kwargs: Any) -> tuple[Any, Any]:
    """(lean loop, model.generate) answers to the same call on the CPU, under inference mode."""
    with torch.inference_mode():
        lean = generate_batch(model, prompts, device="cpu", **kwargs)
        hf = _generate_batch_hf(model, prompts, device="cpu", **kwargs)
    return lean, hf


def record_inputs(model: Any) -> tuple[list[dict[str, Any]], Any]:
    """A pre-hook storing what every forward is fed: ids, positions and the 2D mask."""
    fed: list[dict[str, Any]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        fed.append(
            {
                "input_ids": kwargs["input_ids"].tolist(),
                "position_ids": kwargs["position_ids"].tolist(),
                "attention_mask": None if mask is None else mask.tolist(),
            }
        )

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 9])
def test_generate_batch_equals_hf_generate_float32(
    float32_model: Any, tokenizer: PreTrainedTokenizerFast, max_new_tokens: int
) -> None:
    prompts = [tokenizer(t)["input_ids"] for t in GEN_TEXTS]
    assert len({len(p) for p in prompts}) > 2, "prompts of different lengths: left padding"
    kwargs = {"pad_token_id": PAD, "eos_token_id": EOS, "max_new_tokens": max_new_tokens}
    lean, hf = both_paths(float32_model, prompts, **kwargs)
    assert lean == hf
    assert all(len(row) <= max_new_tokens for row in lean)
    assert any(len(row) == max_new_tokens for row in lean)
    assert len({tuple(row) for row in lean}) > 1, "rows should answer differently"

    # Stopping at an EOS the model really produces, mid-answer for some rows: pick the
    # token most rows produce at some step, so that rows stop at different steps (and a
    # row whose first token it is answers nothing).
    if max_new_tokens > 1:
        counts: dict[int, int] = {}
        for row in lean:
            for token in set(row):
                counts[token] = counts.get(token, 0) + 1
        stop = max(counts, key=lambda t: (counts[t], -t))
        lean_stop, hf_stop = both_paths(
            float32_model,
            prompts,
            pad_token_id=PAD,
            eos_token_id=stop,
            max_new_tokens=max_new_tokens,
        )
        assert lean_stop == hf_stop
        assert lean_stop == [row[: row.index(stop)] if stop in row else row for row in lean]
        assert len({len(row) for row in lean_stop}) > 1
        assert stop not in {t for row in lean_stop for t in row}


def test_generate_batch_feeds_the_model_what_generate_feeds_it(
    float32_model: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    # Every forward's ids, positions and mask, step by step: finished rows are fed pad
    # (here pad is not EOS, so it shows), positions continue each row's count, the mask
    # grows by a column of ones a step. The stop id is one the model produces.
    prompts = [tokenizer(t)["input_ids"] for t in GEN_TEXTS]
    free = generate_batch(
        float32_model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6, device="cpu"
    )
    stop = free[0][1]
    kwargs = {"pad_token_id": PAD, "eos_token_id": stop, "max_new_tokens": 6, "device": "cpu"}
    fed, handle = record_inputs(float32_model)
    try:
        with torch.inference_mode():
            lean = generate_batch(float32_model, prompts, **kwargs)
            n_lean = len(fed)
            hf = _generate_batch_hf(float32_model, prompts, **kwargs)
    finally:
        handle.remove()
    fed_lean, fed_hf = fed[:n_lean], fed[n_lean:]
    assert lean == hf and len(lean[0]) == 1
    assert fed_lean == fed_hf
    # Forward 0 is the prefill, forward s feeds the token of step s - 1: row 0 produced the
    # stop id at step 1, is fed it at forward 2 and pad from forward 3 on.
    assert len(fed_lean) > 3
    assert fed_lean[2]["input_ids"][0] == [stop]
    assert [step["input_ids"][0] for step in fed_lean[3:]] == [[PAD]] * (len(fed_lean) - 3)
    width = max(len(p) for p in prompts)
    assert fed_lean[0]["position_ids"][4] == [0] * (width - len(prompts[4])) + list(
        range(len(prompts[4]))
    )


def test_generate_batch_without_padding_and_pad_equal_to_eos(
    float32_model: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    # Equal lengths: no row is padded, generate then passes no mask at all (nor do we).
    same_length = [tokenizer(t)["input_ids"] for t in ["the cat sat", "a red car", "yes no one"]]
    assert len({len(p) for p in same_length}) == 1
    for prompts in (same_length, [tokenizer(t)["input_ids"] for t in GEN_TEXTS]):
        lean, hf = both_paths(
            float32_model, prompts, pad_token_id=EOS, eos_token_id=EOS, max_new_tokens=5
        )
        assert lean == hf
        assert all(len(row) == 5 for row in lean)


def test_generate_batch_stops_when_every_row_has_finished(
    float32_model: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    # Row c answers c tokens (EOS forced through the output layer at its c-th call).
    prompts = [tokenizer(t)["input_ids"] for t in GEN_TEXTS[:3]]
    calls, handle = force_eos_row_by_row(float32_model, EOS)
    kwargs = {"pad_token_id": PAD, "eos_token_id": EOS, "max_new_tokens": 12, "device": "cpu"}
    try:
        with torch.inference_mode():
            lean = generate_batch(float32_model, prompts, **kwargs)
            lean_calls = len(calls)
            calls.clear()
            hf = _generate_batch_hf(float32_model, prompts, **kwargs)
    finally:
        handle.remove()
    assert lean == hf
    assert [len(row) for row in lean] == [0, 1, 2]
    # The last row finishes at step 2 (the 3rd forward); on the CPU the loop checks every
    # step, so it stops there, not at the next multiple of _STOP_CHECK_EVERY nor at 12.
    assert lean_calls == 3


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The engine tests' tiny Llama (random weights, BPE tokenizer), in float32."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder
    )


def test_generate_batch_equals_hf_generate_on_the_tiny_test_model(
    tiny_llama: tuple[Any, Any],
) -> None:
    # Real prompts of the synthetic suite (varied lengths), as evaluation batches them.
    model, tok = tiny_llama
    suite = build_synthetic_suite({}, seed=0)
    examples = [ex for client in list(suite.clients.values())[:4] for ex in client.test[:2]]
    encoded = encode_examples(tok, examples, data_cfg(128))
    prompts = sorted((e.prompt_ids for e in encoded), key=len, reverse=True)
    assert len({len(p) for p in prompts}) > 1
    eos = int(tok.eos_token_id)
    kwargs = {"pad_token_id": int(tok.pad_token_id), "max_new_tokens": 8}
    lean, hf = both_paths(model, prompts, eos_token_id=eos, **kwargs)
    assert lean == hf
    # An id it produces as EOS: rows stop at different steps.
    stop = lean[0][len(lean[0]) // 2]
    lean_stop, hf_stop = both_paths(model, prompts, eos_token_id=stop, **kwargs)
    assert lean_stop == hf_stop
    assert lean_stop == [row[: row.index(stop)] if stop in row else row for row in lean]


def test_generate_mode_predictions_equal_reference_loop(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    result = evaluate_clients(
        model,
        tokenizer,
        clients,
        "test",
        data_cfg(),
        EvalConfig(mode="generate", max_new_tokens=5, batch_size=4),
        device="cpu",
        keep_predictions=True,
    )
    assert result.predictions is not None
    assert [(p["client"], p["index"]) for p in result.predictions] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("c", 0),
        ("c", 1),
    ]
    for p, (_, e) in zip(result.predictions, all_examples(clients), strict=True):
        prompt = tokenizer(format_prompt(e, "alpaca", None))["input_ids"]
        text = tokenizer.decode(
            greedy_reference(model, prompt, 5), skip_special_tokens=True
        ).strip()
        assert p["prediction"] == text
        assert p["rougeL"] == pytest.approx(rouge_l(text, e.output))
    assert result.mode == "generate" and result.n_examples == 6 and result.n_clients == 3


def test_generation_through_a_peft_model(
    tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    import peft  # a dependency: its absence must fail, not skip

    base = make_model(len(tokenizer))
    config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    wrapped = peft.get_peft_model(base, config)
    result = evaluate_clients(
        wrapped,
        tokenizer,
        clients,
        "test",
        data_cfg(),
        EvalConfig(mode="generate", max_new_tokens=4, batch_size=3),
        device="cpu",
        keep_predictions=True,
    )
    assert result.predictions is not None
    for p, (_, e) in zip(result.predictions, all_examples(clients), strict=True):
        prompt = tokenizer(format_prompt(e, "alpaca", None))["input_ids"]
        expected = tokenizer.decode(
            greedy_reference(wrapped, prompt, 4), skip_special_tokens=True
        ).strip()
        assert p["prediction"] == expected


# --- teacher-forced predictions and loss -------------------------------------------------


def test_teacher_forced_and_loss_equal_manual_float64(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    result = evaluate_clients(
        model,
        tokenizer,
        clients,
        "test",
        data_cfg(),
        EvalConfig(mode="teacher-forced", batch_size=4),
        device="cpu",
        keep_predictions=True,
    )
    assert result.predictions is not None
    total_nll, total_tokens = 0.0, 0
    client_nll: dict[str, float] = {}
    client_tokens: dict[str, int] = {}
    for p, (cid, e) in zip(result.predictions, all_examples(clients), strict=True):
        ids, n_prompt = reference_sequence(tokenizer, e)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (n, V)
        # Position t predicts token t + 1: response tokens n_prompt.. are read at n_prompt-1..
        logp = torch.log_softmax(logits[n_prompt - 1 : len(ids) - 1], dim=-1)  # (R, V)
        targets = torch.tensor(ids[n_prompt:])
        nll = -float(logp.gather(1, targets[:, None]).sum())
        total_nll, total_tokens = total_nll + nll, total_tokens + len(targets)
        client_nll[cid] = client_nll.get(cid, 0.0) + nll
        client_tokens[cid] = client_tokens.get(cid, 0) + len(targets)
        argmax = logits[n_prompt - 1 : len(ids) - 1].argmax(dim=-1).tolist()
        assert p["prediction"] == tokenizer.decode(argmax, skip_special_tokens=True).strip()
        assert p["rougeL"] == pytest.approx(rouge_l(p["prediction"], e.output))
    assert result.loss == pytest.approx(total_nll / total_tokens, rel=1e-10)
    assert result.n_tokens == total_tokens
    for cid, stats in result.per_client.items():
        assert stats["loss"] == pytest.approx(client_nll[cid] / client_tokens[cid], rel=1e-10)
    assert result.mode == "teacher-forced"


def test_loss_is_the_same_in_both_modes(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    gen = evaluate_clients(
        model, tokenizer, clients, "test", data_cfg(), EvalConfig(max_new_tokens=2), device="cpu"
    )
    tf = evaluate_clients(
        model,
        tokenizer,
        clients,
        "test",
        data_cfg(),
        EvalConfig(mode="teacher-forced"),
        device="cpu",
    )
    assert gen.loss == pytest.approx(tf.loss, rel=1e-12)


def test_loss_scores_the_training_target_of_a_custom_template(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    # The literal text after {output} belongs to the target (as in training): here a closing
    # quote, one more scored token per example; Rouge-L still reads the bare output.
    cfg = DataConfig(template="custom", custom_template='Q: {instruction} {input} A: "{output}"')
    result = evaluate_clients(
        model,
        tokenizer,
        clients,
        "test",
        cfg,
        EvalConfig(mode="teacher-forced"),
        device="cpu",
        keep_predictions=True,
    )
    words = [len(e.output.split()) for _, e in all_examples(clients)]
    assert result.n_tokens == sum(n + 2 for n in words)  # output words, the quote, EOS
    assert result.predictions is not None
    assert [p["reference"] for p in result.predictions] == [
        e.output for _, e in all_examples(clients)
    ]


# --- breakdowns and bookkeeping ------------------------------------------------------------


def test_client_weighting_and_category_breakdown(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    # Generation does not read the reference: learn what the model answers, then make those
    # answers the references of client a (Rouge-L 100) and of one of c's examples, and give
    # b and c's other example a reference no answer can match (Rouge-L 0).
    cfg = EvalConfig(mode="generate", max_new_tokens=3, batch_size=2)
    first = evaluate_clients(
        model, tokenizer, clients, "test", data_cfg(), cfg, device="cpu", keep_predictions=True
    )
    assert first.predictions is not None
    answers = [p["prediction"] for p in first.predictions]
    assert all(answers[:3]) and answers[4], "the tiny model should answer with vocabulary words"
    scored = {
        "a": ClientData(
            "a",
            [],
            test=[
                replace(e, output=t) for e, t in zip(clients["a"].test, answers[:3], strict=True)
            ],
        ),
        "b": ClientData("b", [], test=[replace(clients["b"].test[0], output="zzz")]),
        "c": ClientData(
            "c",
            [],
            test=[
                replace(clients["c"].test[0], output=answers[4]),
                replace(clients["c"].test[1], output="zzz"),
            ],
        ),
    }
    result = evaluate_clients(
        model, tokenizer, scored, "test", data_cfg(), cfg, device="cpu", keep_predictions=True
    )
    assert result.predictions is not None
    assert [p["rougeL"] for p in result.predictions] == pytest.approx([100, 100, 100, 0, 100, 0])
    # Client means 100, 0, 50 weighted by sizes 3, 1, 2: 400 / 6, the example-level mean;
    # the mean of client means would be 50.
    assert {c: s["n"] for c, s in result.per_client.items()} == {"a": 3, "b": 1, "c": 2}
    assert [s["rougeL"] for s in result.per_client.values()] == pytest.approx([100, 0, 50])
    assert result.rougeL == pytest.approx(400 / 6)

    # Categories: animals = a's three, c's two (4 of 5 right); colours = b's one.
    cats = result.per_category
    assert set(cats) == {"animals", "colours"}
    assert (cats["animals"]["n_examples"], cats["animals"]["n_clients"]) == (5, 2)
    assert (cats["colours"]["n_examples"], cats["colours"]["n_clients"]) == (1, 1)
    assert cats["animals"]["rougeL"] == pytest.approx(80.0)
    assert cats["colours"]["rougeL"] == pytest.approx(0.0)
    assert sum(c["n_examples"] for c in cats.values()) == result.n_examples == 6
    assert sum(c["n_tokens"] for c in cats.values()) == result.n_tokens
    weighted_loss = sum(c["loss"] * c["n_tokens"] for c in cats.values()) / result.n_tokens
    assert weighted_loss == pytest.approx(result.loss)

    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["rougeL"] == pytest.approx(400 / 6) and "predictions" in as_json
    assert math.isfinite(result.loss)


def test_cap_progress_flags_and_padding_side(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly as it was
    before = [m.training for m in model.modules()]
    tokenizer.padding_side = "right"
    seen: list[tuple[bool, bool]] = []
    hook = model.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, torch.is_inference_mode_enabled()))
    )
    calls: list[int] = []
    cfg = EvalConfig(mode="generate", max_new_tokens=2, batch_size=2, max_examples_per_client=2)
    try:
        result = evaluate_clients(
            model,
            tokenizer,
            clients,
            "test",
            data_cfg(),
            cfg,
            device="cpu",
            progress=calls.append,
            keep_predictions=True,
        )
    finally:
        hook.remove()
        after = [m.training for m in model.modules()]
        model.eval()
    assert after == before
    assert seen and all(s == (False, True) for s in seen)  # eval mode, inference mode
    assert tokenizer.padding_side == "right"
    # First two examples of each client: a has 3, b 1, c 2 -> 5.
    assert result.n_examples == 5 == count_examples(clients, "test", cfg)
    assert result.predictions is not None
    assert [(p["client"], p["index"]) for p in result.predictions] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
        ("c", 1),
    ]
    assert calls == [2, 4, 5]
    assert result.to_dict().get("predictions") is not None


def test_eval_split_and_bad_input(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, clients: dict[str, ClientData]
) -> None:
    result = evaluate_clients(
        model, tokenizer, clients, "eval", data_cfg(), EvalConfig(max_new_tokens=2), device="cpu"
    )
    assert (result.n_examples, result.n_clients, list(result.per_client)) == (1, 1, ["c"])
    assert list(result.per_category) == ["plants"] and "predictions" not in result.to_dict()

    with pytest.raises(FlexLoraError, match="'eval' or 'test'"):
        evaluate_clients(model, tokenizer, clients, "train", data_cfg(), EvalConfig(), device="cpu")  # type: ignore[arg-type]
    with pytest.raises(FlexLoraError, match="no 'eval' examples"):
        evaluate_clients(
            model, tokenizer, {"a": clients["a"]}, "eval", data_cfg(), EvalConfig(), device="cpu"
        )
    no_eos = make_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(FlexLoraError, match="EOS"):
        evaluate_clients(model, no_eos, clients, "test", data_cfg(), EvalConfig(), device="cpu")
