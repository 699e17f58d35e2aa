"""Tokenisation: label masking, EOS, truncation counts, the exact prefix cut, the cache, collate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fixtures package
import flexlora.data.tokenize as tokenize_module
from fixtures.data_fixtures import (
    SPECIALS,
    WORDS,
    make_bpe_tokenizer,
    make_word_tokenizer,
    wrap_tokenizer,
)
from flexlora.config import DataConfig
from flexlora.data.templates import format_prompt, format_target
from flexlora.data.tokenize import (
    IGNORE_INDEX,
    TokenizedCache,
    collate,
    prefix_cut_is_exact,
    tokenize_client,
    tokenize_examples,
)
from flexlora.data.types import ClientData, Example, FederatedDataset
from flexlora.errors import FlexLoraError

SORT = Example("sort these", "3 1 2", "1 2 3", "Sorting")
WORD_TOK = make_word_tokenizer(["sort these 3 1 2 1 2 3 count letters apple banana"])


def ids_of(tok: Any, words: str) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in words.split()]


def test_labels_are_masked_over_the_prompt_and_eos_is_appended() -> None:
    cfg = DataConfig(kind="jsonl", path="x", template="plain")
    split = tokenize_examples([SORT], WORD_TOK, cfg)
    ex = split[0]
    bos, eos = WORD_TOK.bos_token_id, WORD_TOK.eos_token_id
    # "sort these\n3 1 2\n" + "1 2 3": BOS + 5 prompt words, 3 target words, EOS
    expected = [bos, *ids_of(WORD_TOK, "sort these 3 1 2 1 2 3"), eos]
    assert ex.input_ids.tolist() == expected
    assert ex.prompt_length == 6
    assert ex.labels.tolist() == [IGNORE_INDEX] * 6 + expected[6:]
    assert ex.input_ids.dtype == torch.int64 and split.counts == {
        "truncated": 0,
        "dropped": 0,
        "dropped_no_target": 0,
    }


def test_train_on_inputs_keeps_every_label() -> None:
    cfg = DataConfig(kind="jsonl", path="x", template="plain", train_on_inputs=True)
    ex = tokenize_examples([SORT], WORD_TOK, cfg)[0]
    assert ex.labels.tolist() == ex.input_ids.tolist() and ex.prompt_length == 6


def test_truncation_is_counted_and_drop_overlong_drops() -> None:
    short = Example("count letters", "", "apple", "c")
    examples = [SORT, short, SORT]
    # SORT has 10 tokens, short 5: max_length 8 cuts SORT to 8 (no EOS), keeps short
    cut = tokenize_examples(
        examples, WORD_TOK, DataConfig(kind="jsonl", path="x", template="plain", max_length=8)
    )
    assert cut.counts == {"truncated": 2, "dropped": 0, "dropped_no_target": 0}
    assert cut.lengths.tolist() == [8, 5, 8] and cut.example_index.tolist() == [0, 1, 2]
    assert cut[0].input_ids[-1].item() != WORD_TOK.eos_token_id
    assert cut[0].labels.tolist()[6:] == ids_of(WORD_TOK, "1 2")
    dropped = tokenize_examples(
        examples,
        WORD_TOK,
        DataConfig(kind="jsonl", path="x", template="plain", max_length=8, drop_overlong=True),
    )
    assert dropped.counts == {"truncated": 0, "dropped": 2, "dropped_no_target": 0}
    assert len(dropped) == 1 and dropped.example_index.tolist() == [1]


def test_a_prompt_filling_max_length_leaves_no_target_and_is_dropped() -> None:
    long_prompt = Example("sort these 3 1 2 1 2 3 apple banana", "", "apple", "c")
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=8)
    split = tokenize_examples([long_prompt, SORT], WORD_TOK, cfg)
    # one outcome per example: the cut-away target counts as dropped_no_target only
    assert split.counts == {"truncated": 1, "dropped": 0, "dropped_no_target": 1}
    assert split.example_index.tolist() == [1]
    with_inputs = tokenize_examples(
        [long_prompt], WORD_TOK, DataConfig(**{**cfg.__dict__, "train_on_inputs": True})
    )
    assert len(with_inputs) == 1 and with_inputs[0].prompt_length == 8


def test_tokenizer_without_eos_is_an_error() -> None:
    tok = make_word_tokenizer(["a"])
    tok.eos_token = None
    with pytest.raises(FlexLoraError, match="has no EOS token"):
        tokenize_examples([SORT], tok, DataConfig(kind="jsonl", path="x"))


def test_tokenize_client_rejects_unknown_split() -> None:
    with pytest.raises(
        FlexLoraError, match=r"client c1: unknown split 'dev' \(known: train, eval, test\)"
    ):
        tokenize_client(
            ClientData("c1", [SORT]), "dev", WORD_TOK, DataConfig(kind="jsonl", path="x")
        )


def _texts(n: int, rng: np.random.Generator, min_words: int, max_words: int) -> list[Example]:
    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    return [
        Example(
            words(int(rng.integers(min_words, max_words))).capitalize() + ".",
            words(int(rng.integers(0, max_words))),
            words(int(rng.integers(1, 12))),
            "c",
        )
        for _ in range(n)
    ]


BPE_TOK = make_bpe_tokenizer([" ".join(WORDS)] * 30 + ["The 3 1 2, Sort.\nyes no"] * 5)


def test_fast_path_matches_the_transformers_tokenizer_and_offsets() -> None:
    examples = _texts(40, np.random.default_rng(0), 1, 30)
    cfg = DataConfig(kind="jsonl", path="x", max_length=4096)
    split = tokenize_examples(examples, BPE_TOK, cfg)
    for k, e in enumerate(examples):
        prompt = format_prompt(e, "alpaca")
        enc = BPE_TOK(prompt + format_target(e, "alpaca"), return_offsets_mapping=True)
        assert split[k].input_ids.tolist() == [*enc["input_ids"], BPE_TOK.eos_token_id]
        # reference boundary: the first non-special token that ends after the prompt
        first_target = next(
            i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > len(prompt) and b > a
        )
        assert split[k].prompt_length == first_target


def _byte_level_tokenizer() -> Any:
    """The shipped model's tokenizer: byte-level BPE after Digits + the GPT-2 split."""
    from transformers import AutoTokenizer

    from flexlora.assets import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:flexlora-tiny"))


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
@pytest.mark.parametrize("max_length", [16, 48, 200])
def test_prefix_cut_gives_exactly_the_full_tokenisation(
    max_length: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = BPE_TOK if kind == "sentencepiece" else _byte_level_tokenizer()
    assert prefix_cut_is_exact(tok.backend_tokenizer)
    rng = np.random.default_rng(max_length)
    # a first chunk of short tokens (digits) sets a low characters-per-token estimate, so
    # that the later texts of whole-word tokens are cut too short and tokenised again
    digits = [Example(" ".join(map(str, rng.integers(0, 9, 400))), "", "1", "c") for _ in range(64)]
    examples = [*digits, *_texts(300, rng, 1, 120)]
    examples.append(Example("a" + " " * 900 + "b", "", "tail", "c"))  # no space after a non-space
    # white space other than single spaces around the cut points: newlines, tabs, runs
    tricky = "Sort these:\n\n  3 1 2\t apple, banana's 42x  yes\n no " * 40
    examples.append(Example(tricky, tricky, "done", "c"))
    cfg = DataConfig(kind="jsonl", path="x", max_length=max_length, template="plain")
    monkeypatch.setattr(tokenize_module, "ENCODE_CHUNK", 64)  # several chunks: the estimate adapts
    calls: list[list[str]] = []

    class Spy:
        def __init__(self, backend: Any) -> None:
            self.backend = backend

        def to_str(self) -> str:
            return str(self.backend.to_str())

        def encode_batch(self, texts: list[str], **kwargs: Any) -> Any:
            calls.append(texts)
            return self.backend.encode_batch(texts, **kwargs)

    monkeypatch.setattr(tokenize_module, "_backend", lambda tok: Spy(tok.backend_tokenizer))
    cut, cut_status = tokenize_module._tokenize(examples, tok, cfg)
    # texts were cut short, and the ones cut too short were tokenised again whole
    full_texts = {format_prompt(e, "plain") + e.output for e in examples}
    assert any(text not in full_texts for batch in calls for text in batch)
    assert len(calls) > -(-len(examples) // 64)
    monkeypatch.setattr(tokenize_module, "prefix_cut_is_exact", lambda backend: False)
    full, full_status = tokenize_module._tokenize(examples, tok, cfg)
    assert np.array_equal(cut.ids, full.ids) and np.array_equal(cut.offsets, full.offsets)
    assert np.array_equal(cut.prompt_lengths, full.prompt_lengths)
    assert np.array_equal(cut_status, full_status) and cut.counts == full.counts
    assert cut.counts["truncated"] + cut.counts["dropped_no_target"] > 0


def test_prefix_cut_is_refused_when_merges_cross_spaces() -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tok.train_from_iterator(
        [" ".join(WORDS)] * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS)
    )
    assert not prefix_cut_is_exact(tok)  # its vocabulary has tokens such as "the▁"
    assert not prefix_cut_is_exact(WORD_TOK.backend_tokenizer)  # not BPE
    byte_level = _byte_level_tokenizer().backend_tokenizer
    assert prefix_cut_is_exact(byte_level)
    no_regex = Tokenizer.from_str(byte_level.to_str())
    no_regex.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert not prefix_cut_is_exact(no_regex)  # one piece per text: merges may cross spaces
    other_split = Tokenizer.from_str(byte_level.to_str())
    other_split.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "merged_with_next"), pre_tokenizers.ByteLevel(use_regex=True)]
    )
    assert not prefix_cut_is_exact(other_split)  # an unknown splitter: not trusted
    wrapped = wrap_tokenizer(tok)
    examples = _texts(50, np.random.default_rng(1), 1, 60)
    split = tokenize_examples(
        examples, wrapped, DataConfig(kind="jsonl", path="x", max_length=4096)
    )
    for k, e in enumerate(examples):
        text = format_prompt(e, "alpaca") + e.output
        assert split[k].input_ids.tolist() == [*wrapped(text)["input_ids"], wrapped.eos_token_id]


class SlowTokenizer:
    """A minimal slow tokenizer: a word per id, no offsets."""

    is_fast = False
    eos_token_id = 2
    name_or_path = "slow"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<s>": 1, "</s>": 2}

    def __call__(
        self, texts: list[str], add_special_tokens: bool = True
    ) -> dict[str, list[list[int]]]:
        return {
            "input_ids": [
                [1] + [self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()]
                for t in texts
            ]
        }


def test_slow_tokenizer_fallback_uses_the_prompt_length() -> None:
    split = tokenize_examples(
        [SORT], SlowTokenizer(), DataConfig(kind="jsonl", path="x", template="plain")
    )
    assert split[0].prompt_length == 6 and len(split[0].input_ids) == 10
    assert split[0].labels.tolist()[:6] == [IGNORE_INDEX] * 6


@pytest.mark.parametrize("tokenizer", ["fast", "slow"])
def test_chunked_tokenisation_equals_one_chunk_per_example(
    tokenizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts are built and ids stored a chunk at a time: chunk edges must change nothing."""
    short = Example("count letters", "", "apple", "c")
    examples = [SORT, short] * 11 + [SORT]  # 23 examples: chunks of 5 leave a partial last one
    tok = WORD_TOK if tokenizer == "fast" else SlowTokenizer()
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=8)
    monkeypatch.setattr(tokenize_module, "ENCODE_CHUNK", 5)
    chunked, chunked_status = tokenize_module._tokenize(examples, tok, cfg)
    singles = [tokenize_examples([e], tok, cfg) for e in examples]
    assert chunked.ids.dtype == np.int32
    assert chunked.ids.tolist() == [i for s in singles for i in s.ids.tolist()]
    assert chunked.lengths.tolist() == [int(s.lengths[0]) for s in singles]
    assert chunked.prompt_lengths.tolist() == [int(s.prompt_lengths[0]) for s in singles]
    assert chunked.example_index.tolist() == list(range(len(examples)))
    assert chunked.counts == {"truncated": 12, "dropped": 0, "dropped_no_target": 0}
    assert chunked_status.tolist() == [1, 0] * 11 + [1]


def test_collate_right_pads() -> None:
    split = tokenize_examples(
        [SORT, Example("count letters", "", "apple", "c")],
        WORD_TOK,
        DataConfig(kind="jsonl", path="x", template="plain"),
    )
    batch = collate([split[0], split[1]], pad_id=WORD_TOK.pad_token_id)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (2, 10),
        "labels": (2, 10),
        "attention_mask": (2, 10),
    }
    assert batch["attention_mask"].sum(dim=1).tolist() == [10, 5]
    assert batch["input_ids"][1, 5:].tolist() == [WORD_TOK.pad_token_id] * 5
    assert (
        batch["labels"][1].tolist()
        == [IGNORE_INDEX] * 3 + split[1].input_ids.tolist()[3:] + [IGNORE_INDEX] * 5
    )
    with pytest.raises(FlexLoraError, match="collate: empty batch"):
        collate([], 0)


def _federation() -> FederatedDataset:
    rng = np.random.default_rng(5)
    seen = {
        f"c{k}": ClientData(
            f"c{k}", _texts(6, rng, 1, 14), _texts(2, rng, 1, 14), _texts(1, rng, 1, 14)
        )
        for k in range(4)
    }
    unseen = {"u0": ClientData("u0", _texts(3, rng, 1, 14), [], _texts(2, rng, 1, 14))}
    return FederatedDataset(seen, unseen, "test")


def test_cache_tokenises_once_and_reloads_the_same_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = _federation()
    cfg = DataConfig(
        kind="jsonl", path="x", template="plain", max_length=40, cache_dir=str(tmp_path / "cache")
    )
    cache = TokenizedCache(cfg.cache_dir)
    first = cache.load_or_tokenize(fd, BPE_TOK, cfg)
    assert not first.from_cache
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [f"{first.key}.npz"]  # one file, no temp file left behind

    def no_tokenizing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the tokenizer was called on a cache hit")

    monkeypatch.setattr(tokenize_module, "_tokenize", no_tokenizing)
    second = cache.load_or_tokenize(fd, BPE_TOK, cfg)
    assert second.from_cache and second.key == first.key
    assert second.counts == first.counts and first.counts["truncated"] > 0
    kept = sum(len(t) for by_split in first.splits.values() for t in by_split.values())
    assert kept > 0 and kept + first.counts["dropped_no_target"] == 41  # 4 x (6 + 2 + 1) + 3 + 2
    for cid in [*fd.seen, *fd.unseen]:
        for split in ("train", "eval", "test"):
            a, b = first.split(cid, split), second.split(cid, split)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
            assert np.array_equal(a.example_index, b.example_index) and a.counts == b.counts
    with pytest.raises(FlexLoraError, match="no tokenised 'train' split for client 'zz'"):
        second.split("zz", "train")


def test_cache_splits_equal_per_client_tokenisation(tmp_path: Path) -> None:
    fd = _federation()
    cfg = DataConfig(
        kind="jsonl", path="x", template="plain", max_length=30, cache_dir=str(tmp_path)
    )
    tokenized = TokenizedCache(cfg.cache_dir).load_or_tokenize(fd, BPE_TOK, cfg)
    for client in [*fd.seen.values(), *fd.unseen.values()]:
        for split in ("train", "eval", "test"):
            ref = tokenize_client(client, split, BPE_TOK, cfg)
            got = tokenized.split(client.client_id, split)
            assert np.array_equal(ref.ids, got.ids) and np.array_equal(
                ref.prompt_lengths, got.prompt_lengths
            )
            assert np.array_equal(ref.example_index, got.example_index) and ref.counts == got.counts
    assert tokenized.counts["truncated"] > 0 and len(tokenized.split("c0", "train")) > 0


def test_cache_key_changes_with_settings_data_and_tokenizer(tmp_path: Path) -> None:
    fd = _federation()
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=40)
    key = tokenize_module.cache_key(fd, BPE_TOK, cfg)
    assert key == tokenize_module.cache_key(_federation(), BPE_TOK, cfg)
    for change in (
        {"max_length": 41},
        {"template": "alpaca"},
        {"train_on_inputs": True},
        {"drop_overlong": True},
    ):
        assert (
            tokenize_module.cache_key(fd, BPE_TOK, DataConfig(**{**cfg.__dict__, **change})) != key
        )
    assert (
        tokenize_module.cache_key(
            fd, make_bpe_tokenizer([" ".join(WORDS)] * 30, vocab_size=250), cfg
        )
        != key
    )
    edited = _federation()
    edited.seen["c0"].train[0] = Example("other", "", "x", "c")
    assert tokenize_module.cache_key(edited, BPE_TOK, cfg) != key


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fd = _federation()
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=40)
    cache = TokenizedCache(tmp_path)
    key = tokenize_module.cache_key(fd, BPE_TOK, cfg)
    cache.path_for(key).write_bytes(b"not a zip file")
    with caplog.at_level("WARNING"):
        result = cache.load_or_tokenize(fd, BPE_TOK, cfg)
    assert not result.from_cache and "is unreadable" in caplog.text
    assert cache.load_or_tokenize(fd, BPE_TOK, cfg).from_cache


def test_held_out_choice_does_not_change_the_cache_key() -> None:
    fd = _federation()
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=40)
    moved = FederatedDataset(
        {k: v for k, v in fd.seen.items() if k != "c1"}, {"c1": fd.seen["c1"], **fd.unseen}, "test"
    )
    assert tokenize_module.cache_key(moved, BPE_TOK, cfg) == tokenize_module.cache_key(
        fd, BPE_TOK, cfg
    )


def test_unwritable_cache_folder_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    cfg = DataConfig(kind="jsonl", path="x", template="plain", max_length=40)
    with caplog.at_level("WARNING"):
        result = TokenizedCache(blocker / "tokens").load_or_tokenize(_federation(), BPE_TOK, cfg)
    assert not result.from_cache and len(result.split("c0", "train")) > 0
    assert "could not write the token cache" in caplog.text
