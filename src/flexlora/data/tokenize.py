"""Tokenisation of clients: prompt + target + EOS, labels masked over the prompt, a disk cache.

One example becomes `tokens(prompt + target) + [EOS]` (the tokenizer's own special
tokens, e.g. Llama's BOS, included). Its labels equal its input ids except over the
prompt, where they are -100, unless `train_on_inputs`. The prompt / target boundary is
the token that holds the first character of the target (exact even when a token
straddles the boundary: that token is a target token), found from the fast tokenizer's
character offsets, so the text is tokenised once. A slow tokenizer falls back on
tokenising the prompt on its own and taking its length.

Over-length examples (more than `max_length` tokens with the EOS) are never handled
silently: they are cut to `max_length` and counted as `truncated`, or, with
`drop_overlong`, dropped and counted as `dropped`. An example whose target is entirely
cut away (a prompt of `max_length` tokens or more) would have no label to learn: it is
dropped and counted as `dropped_no_target` (unless `train_on_inputs`).

Storage: a split is three flat arrays (ids, offsets, prompt lengths), so a whole
federation is one `.npz` file in the cache (`TokenizedCache`) rather than thousands of
small ones, and examples become tensors only when a batch asks for them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flexlora.atomic import atomic_write, remove_stale_temps
from flexlora.config import DataConfig
from flexlora.data.partition import sort_ids
from flexlora.data.templates import check_template, format_prompt, format_target
from flexlora.data.types import ClientData, Example, FederatedDataset
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
COUNT_KEYS = ("truncated", "dropped", "dropped_no_target")
SPLITS = ("train", "eval", "test")
# Texts per call of the tokenizer: large enough to keep its threads busy, small enough
# that one call's encodings (ids, offsets, token strings) stay small. On the 1,612-client
# NI split (benchmarks/tokenize_chunks.py), 512 / 1024 / 2048 texts a call took about the
# same time (10.9 / 10.6 / 11.1 s) and raised the peak by 184 / 249 / 375 MiB.
ENCODE_CHUNK = 1024
# The prefix cut's budget: this percentile of the characters per token measured on the
# previous chunk, times this margin; texts cut too short are cut again longer.
CUT_PERCENTILE = 50
CUT_MARGIN = 1.15
CACHE_FORMAT = 1


@dataclass(frozen=True)
class TokenizedExample:
    """One training example as tensors."""

    input_ids: Tensor
    """(seq,) int64: prompt + target + EOS (cut to max_length when over-long)."""
    labels: Tensor
    """(seq,) int64: input_ids with -100 over the prompt (unless train_on_inputs)."""
    prompt_length: int


@dataclass
class TokenizedSplit:
    """One client's split: example k is ids[offsets[k]:offsets[k+1]]."""

    ids: np.ndarray
    """(total tokens,) all examples back to back: int32 (uint16 from a small-vocabulary cache)."""
    offsets: np.ndarray
    """(n + 1,) int64, offsets[0] == 0."""
    prompt_lengths: np.ndarray
    """(n,) int32: tokens of each example masked out of the labels."""
    example_index: np.ndarray
    """(n,) int32: position of each kept example in the split's example list."""
    train_on_inputs: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    """truncated / dropped / dropped_no_target among the split's examples."""

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) tokens per example."""
        return np.diff(self.offsets)

    def __getitem__(self, k: int) -> TokenizedExample:
        if not -len(self) <= k < len(self):
            raise IndexError(f"example {k} of a split of {len(self)}")
        k %= len(self)
        input_ids = torch.from_numpy(
            self.ids[self.offsets[k] : self.offsets[k + 1]].astype(np.int64)
        )
        labels = input_ids.clone()
        prompt_length = int(self.prompt_lengths[k])
        if not self.train_on_inputs:
            labels[:prompt_length] = IGNORE_INDEX
        return TokenizedExample(input_ids, labels, prompt_length)

    def __iter__(self) -> Iterator[TokenizedExample]:
        return (self[k] for k in range(len(self)))


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise FlexLoraError(f"tokenizer {name!r} has no EOS token: set tokenizer.eos_token first")
    return int(eos)


def _backend(tokenizer: Any) -> Any | None:
    """The Rust tokenizer of a fast tokenizer, without any truncation or padding set on it."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        # A previous call of the wrapper left settings on it: work on a clean copy.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def _space_marker(spec: dict[str, Any]) -> str | None:
    """The character spaces become (SentencePiece's "▁"), when that is all that happens to them.

    Accepted: a Metaspace pre-tokenizer with no normalizer, or no pre-tokenizer with the
    legacy Llama normalizer (Prepend "▁", Replace " " -> "▁"). Anything else: None.
    """
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    if pre is not None:
        if normalizer is None and pre.get("type") == "Metaspace":
            return str(pre.get("replacement", "\u2581"))
        return None
    steps = (
        normalizer.get("normalizers", [])
        if normalizer and normalizer.get("type") == "Sequence"
        else [normalizer]
    )
    marker = None
    for step in steps:
        if step is None:
            continue
        if step.get("type") == "Replace" and step.get("pattern", {}).get("String") == " ":
            marker = step.get("content")
        elif step.get("type") != "Prepend" or " " in step.get("prepend", " "):
            return None
    return marker


def _splits_at_spaces(pre: dict[str, Any] | None) -> bool:
    """Whether this pre-tokenizer always ends a piece between a non-space and a space.

    True for byte-level BPE's GPT-2 split (ByteLevel with use_regex: no alternative of
    its pattern matches a non-space followed by a space, and a match ending before such
    a point never depends on the text after it), optionally in a Sequence with Digits
    (which only splits digits apart). BPE never merges across pieces, so the tokens of
    `text[:p]`, for p such a point, are then the first tokens of `text`.
    """
    if pre is None:
        return False
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    others_ok = all(s.get("type") in ("ByteLevel", "Digits") for s in steps)
    return others_ok and bool(byte_level) and all(s.get("use_regex", True) for s in byte_level)


def prefix_cut_is_exact(backend: Any) -> bool:
    """Whether the tokens of `text[:p]` are the first tokens of `text`, for a cut p before a space.

    Two kinds of BPE tokenizer qualify. SentencePiece-style ones (Llama's, stories260K's)
    where no vocabulary entry holds the space marker "▁" after its first character
    (unless it is all markers): no merge can then join the character before a space that
    follows a non-space with the space, so BPE on each side of that point runs
    independently. And byte-level ones that split words apart first with the GPT-2
    pattern (`_splits_at_spaces`; the shipped flexlora-tiny's). Also required: no
    normalizer (byte-level), nothing appended after the text by the post-processor, no
    added token with a space in it, no BPE dropout or subword affixes. Used to tokenise
    only a prefix of texts far longer than `max_length`: an exact shortcut, not an
    approximation.
    """
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("ignore_merges"):
        return False
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return False
    post = spec.get("post_processor")
    if post is not None:
        template = post.get("single") or [{}]
        if post.get("type") != "TemplateProcessing" or "Sequence" not in template[-1]:
            return False  # e.g. an EOS appended after the text
    if any(" " in added.get("content", "") for added in spec.get("added_tokens", [])):
        return False
    if spec.get("normalizer") is None and _splits_at_spaces(spec.get("pre_tokenizer")):
        return True
    marker = _space_marker(spec)
    if not marker:
        return False
    vocab = model.get("vocab") or {}
    return all(marker not in token[1:] or not token.strip(marker) for token in vocab)


def _safe_cut(text: str, budget: int) -> int:
    """The first position >= budget holding a space after a non-space, else len(text)."""
    pos = text.find(" ", budget)
    while pos > 0:
        if text[pos - 1] != " ":
            return pos
        pos = text.find(" ", pos + 1)
    return len(text)


def _encode_prefixes(
    backend: Any, texts: list[str], max_length: int, chars_per_token: float
) -> tuple[list[str], list[Any]]:
    """Encode each text cut at a safe point past ~max_length tokens; (texts used, encodings).

    A cut text that gave fewer than `max_length` tokens was cut too short: it is cut
    again with twice the budget, until it has enough tokens or is whole.
    """
    budget = int((max_length + 8) * chars_per_token * CUT_MARGIN)
    used = [text[: _safe_cut(text, budget)] for text in texts]
    encodings = backend.encode_batch(used, add_special_tokens=True)
    short = [
        i for i, e in enumerate(encodings) if len(used[i]) < len(texts[i]) and len(e) < max_length
    ]
    while short:
        budget *= 2
        retry = [texts[i][: _safe_cut(texts[i], budget)] for i in short]
        for i, text, e in zip(
            short, retry, backend.encode_batch(retry, add_special_tokens=True), strict=True
        ):
            used[i], encodings[i] = text, e
        short = [
            i for i in short if len(used[i]) < len(texts[i]) and len(encodings[i]) < max_length
        ]
    return used, encodings


def _encode_fast(
    backend: Any, chunks: Iterable[tuple[list[str], list[int]]], max_length: int
) -> Iterator[tuple[Any, int]]:
    """(Encoding, prompt length in tokens) per text, from one batch call per chunk of texts.

    `chunks` yields (texts, characters of each text's prompt). When
    `prefix_cut_is_exact`, a text is cut at a safe point a little past where its first
    `max_length` tokens should end (estimated from the characters per token seen so
    far); a cut text that still gives fewer than `max_length` tokens is cut again
    further on. The ids of a cut text are then the exact first tokens of the whole text,
    and there are at least `max_length` of them: the example is over-long either way.
    """
    cut_ok = prefix_cut_is_exact(backend)
    chars_per_token = 4.0  # a first guess, replaced by what each chunk measures
    for chunk, prompt_chars in chunks:
        if not cut_ok:
            # the call the transformers wrapper makes, without turning every field into lists
            used, encodings = chunk, backend.encode_batch(chunk, add_special_tokens=True)
        else:
            used, encodings = _encode_prefixes(backend, chunk, max_length, chars_per_token)
            ratios = [len(u) / len(e) for e, u in zip(encodings, used, strict=True) if len(e)]
            chars_per_token = float(np.percentile(ratios, CUT_PERCENTILE)) if ratios else 4.0
        for encoding, text, boundary in zip(encodings, used, prompt_chars, strict=True):
            prompt_length = len(encoding)
            # the token holding the first target character; some characters (e.g. spaces a
            # normaliser drops) map to no token, so look further along the target
            for pos in range(boundary, len(text)):
                token = encoding.char_to_token(pos)
                if token is not None:
                    prompt_length = token
                    break
            yield encoding, prompt_length


class _TokenList:
    """A slow tokenizer's ids, shaped like a fast tokenizer's Encoding (len() and .ids)."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)


def _encode_slow(
    tokenizer: Any, chunks: Iterable[tuple[list[str], list[str]]]
) -> Iterator[tuple[Any, int]]:
    """(ids, prompt length): per chunk, the whole texts and the prompts alone, one call each."""
    for texts, prompts in chunks:
        full = tokenizer(texts, add_special_tokens=True)["input_ids"]
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        yield from ((_TokenList(ids), len(p)) for ids, p in zip(full, prompt_ids, strict=True))


# Per-example outcome of tokenisation (kept as is, kept cut, or left out and why).
KEPT, TRUNCATED, DROPPED, DROPPED_NO_TARGET = 0, 1, 2, 3
_STATUS_KEYS = {TRUNCATED: "truncated", DROPPED: "dropped", DROPPED_NO_TARGET: "dropped_no_target"}


def _count(status: np.ndarray) -> dict[str, int]:
    """truncated / dropped / dropped_no_target counts of a run of per-example statuses."""
    tally = np.bincount(status, minlength=4)
    return {name: int(tally[code]) for code, name in _STATUS_KEYS.items()}


def _texts(examples: Sequence[Example], cfg: DataConfig) -> Iterator[tuple[list[str], list[str]]]:
    """(prompt + target texts, prompts) per chunk of ENCODE_CHUNK examples.

    Built a chunk at a time so that a federation's formatted texts never all exist at once.
    """
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start : start + ENCODE_CHUNK]
        prompts = [format_prompt(e, cfg.template, cfg.custom_template) for e in chunk]
        texts = [
            p + format_target(e, cfg.template, cfg.custom_template)
            for p, e in zip(prompts, chunk, strict=True)
        ]
        yield texts, prompts


def _tokenize(
    examples: Sequence[Example], tokenizer: Any, cfg: DataConfig
) -> tuple[TokenizedSplit, np.ndarray]:
    """The tokenised split and the (n,) status of every input example."""
    check_template(cfg.template, cfg.custom_template)
    eos = _eos_id(tokenizer)
    backend = _backend(tokenizer)
    encoded: Iterator[tuple[Any, int]]
    if backend is not None:
        chunks = ((texts, [len(p) for p in prompts]) for texts, prompts in _texts(examples, cfg))
        encoded = _encode_fast(backend, chunks, cfg.max_length)
    else:
        encoded = _encode_slow(tokenizer, _texts(examples, cfg))

    status = np.zeros(len(examples), dtype=np.int8)
    # Kept ids go into int32 arrays a chunk at a time: a federation's ids held as Python
    # int lists would cost ~10x the memory and leave the heap fragmented after.
    id_chunks: list[np.ndarray] = []
    pending: list[list[int]] = []
    lengths: list[int] = []
    prompt_lengths: list[int] = []
    example_index: list[int] = []

    def flush() -> None:
        count = sum(len(ids) for ids in pending)
        id_chunks.append(
            np.fromiter(itertools.chain.from_iterable(pending), dtype=np.int32, count=count)
        )
        pending.clear()

    for k, (encoding, prompt_length) in enumerate(encoded):
        if len(encoding) > cfg.max_length and (
            cfg.drop_overlong or (prompt_length >= cfg.max_length and not cfg.train_on_inputs)
        ):
            # over-long, and dropped either way: decided without copying its ids out
            status[k] = DROPPED if cfg.drop_overlong else DROPPED_NO_TARGET
            continue
        ids: list[int] = encoding.ids
        has_eos = bool(ids) and ids[-1] == eos  # some tokenizers append EOS themselves
        if len(ids) + (not has_eos) > cfg.max_length:
            if cfg.drop_overlong:
                status[k] = DROPPED
                continue
            status[k] = TRUNCATED
            ids = ids[: cfg.max_length]  # the EOS is cut away with the rest
        elif not has_eos:
            ids.append(eos)  # `ids` is a fresh list of this example's own
        prompt_length = min(prompt_length, len(ids))
        if prompt_length >= len(ids) and not cfg.train_on_inputs:
            status[k] = DROPPED_NO_TARGET
            continue
        pending.append(ids)
        lengths.append(len(ids))
        prompt_lengths.append(prompt_length)
        example_index.append(k)
        if len(pending) == ENCODE_CHUNK:
            flush()
    flush()

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokenized = TokenizedSplit(
        ids=np.concatenate(id_chunks),
        offsets=offsets,
        prompt_lengths=np.asarray(prompt_lengths, dtype=np.int32),
        example_index=np.asarray(example_index, dtype=np.int32),
        train_on_inputs=cfg.train_on_inputs,
        counts=_count(status),
    )
    return tokenized, status


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, cfg: DataConfig
) -> TokenizedSplit:
    """Tokenise a list of examples with one batched tokenizer call (per chunk of texts)."""
    return _tokenize(examples, tokenizer, cfg)[0]


def tokenize_client(
    client: ClientData, split: str, tokenizer: Any, cfg: DataConfig
) -> TokenizedSplit:
    """Tokenise one split ("train", "eval" or "test") of one client (no cache)."""
    if split not in SPLITS:
        raise FlexLoraError(
            f"client {client.client_id}: unknown split {split!r} (known: {', '.join(SPLITS)})"
        )
    return tokenize_examples(getattr(client, split), tokenizer, cfg)


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch: input_ids (pad_id), labels (-100), attention_mask (0 over padding).

    Each output is (batch, longest) int64.
    """
    if not batch:
        raise FlexLoraError("collate: empty batch")
    longest = max(len(ex.input_ids) for ex in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        input_ids[row, :n] = ex.input_ids
        labels[row, :n] = ex.labels
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ---------------------------------------------------------------------------------------
# The whole federation, tokenised once and cached on disk.


@dataclass
class TokenizedDataset:
    """Every client's tokenised splits: splits[client_id][split]."""

    splits: dict[str, dict[str, TokenizedSplit]]
    key: str
    from_cache: bool

    def split(self, client_id: str, split: str) -> TokenizedSplit:
        try:
            return self.splits[client_id][split]
        except KeyError:
            raise FlexLoraError(f"no tokenised {split!r} split for client {client_id!r}") from None

    @property
    def counts(self) -> dict[str, int]:
        """truncated / dropped / dropped_no_target summed over all clients and splits."""
        total = dict.fromkeys(COUNT_KEYS, 0)
        for by_split in self.splits.values():
            for tokenized in by_split.values():
                for key, value in tokenized.counts.items():
                    total[key] = total.get(key, 0) + value
        return total


def _clients(dataset: FederatedDataset) -> list[ClientData]:
    """Seen and unseen clients in natural id order: which ones are held out does not
    change their tokens, so federations that differ only in that share one cache file."""
    clients = {**dataset.seen, **dataset.unseen}
    return [clients[cid] for cid in sort_ids(list(clients))]


def data_fingerprint(dataset: FederatedDataset) -> str:
    """sha256 of every client id and example, in order (length-prefixed, so unambiguous).

    A repeated instruction (every example of an NI task shares one) is hashed once per
    run of repeats: the same information, a fifth of the bytes.
    """
    h = hashlib.sha256()
    for client in _clients(dataset):
        parts: list[str] = [f"C{len(client.client_id)}:{client.client_id}"]
        for split in SPLITS:
            examples: list[Example] = getattr(client, split)
            parts.append(f"S{split}{len(examples)}")
            previous = None
            for e in examples:
                if e.instruction == previous:
                    parts.append("=")
                else:
                    parts.append(f"I{len(e.instruction)}:{e.instruction}")
                    previous = e.instruction
                parts.append(
                    f"{len(e.input)}:{e.input}{len(e.output)}:{e.output}{len(e.category)}:{e.category}"
                )
        h.update("".join(parts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Name, vocabulary size, EOS and a hash of the full tokenizer definition."""
    backend = (
        getattr(tokenizer, "backend_tokenizer", None)
        if getattr(tokenizer, "is_fast", False)
        else None
    )
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "all_special_tokens", []))
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "eos": _eos_id(tokenizer),
        "hash": hashlib.sha256((definition + special).encode("utf-8", "surrogatepass")).hexdigest(),
    }


def cache_key(dataset: FederatedDataset, tokenizer: Any, cfg: DataConfig) -> str:
    """sha256 of everything the tokenised federation depends on."""
    parts = {
        "format": CACHE_FORMAT,
        "data": data_fingerprint(dataset),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": cfg.template,
        "custom_template": cfg.custom_template if cfg.template == "custom" else None,
        "max_length": cfg.max_length,
        "train_on_inputs": cfg.train_on_inputs,
        "drop_overlong": cfg.drop_overlong,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flexlora" / "tokens"


class TokenizedCache:
    """Tokenised federations on disk: one `<key>.npz` per (data, tokenizer, settings).

    `cache_dir` defaults to ~/.cache/flexlora/tokens (DataConfig.cache_dir overrides).
    A cache file that cannot be read is logged and rebuilt; a cache folder that cannot be
    written is logged and skipped. Files are never evicted: delete the folder to reclaim
    the space.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def path_for(self, key: str) -> Path:
        return self.cache_dir / f"{key}.npz"

    def load_or_tokenize(
        self, dataset: FederatedDataset, tokenizer: Any, cfg: DataConfig
    ) -> TokenizedDataset:
        """The tokenised federation: from the cache when present, else tokenised and saved."""
        key = cache_key(dataset, tokenizer, cfg)
        path = self.path_for(key)
        if path.is_file():
            try:
                splits = _read(path, cfg.train_on_inputs)
                if sort_ids(list(splits)) != [c.client_id for c in _clients(dataset)]:
                    raise ValueError("its clients are not the dataset's")
                log.info("tokenised clients loaded from the cache %s", path)
                return TokenizedDataset(splits, key, from_cache=True)
            except Exception as e:  # any damage (BadZipFile, EOFError ...): rebuilt, never fatal
                log.warning(
                    "cache file %s is unreadable (%s: %s): tokenising again",
                    path,
                    type(e).__name__,
                    e,
                )
        started = time.perf_counter()
        splits = tokenize_dataset(dataset, tokenizer, cfg)
        result = TokenizedDataset(splits, key, from_cache=False)
        log.info(
            "tokenised %d clients in %.1f s (%s)",
            len(splits),
            time.perf_counter() - started,
            ", ".join(f"{k} {v}" for k, v in result.counts.items()),
        )
        no_target = result.counts["dropped_no_target"]
        if no_target:
            log.warning(
                "%d examples have a prompt of data.max_length=%d tokens or more, leaving no "
                "target to learn: dropped (raise data.max_length to keep them)",
                no_target,
                cfg.max_length,
            )
        try:
            _write(path, splits, cfg.train_on_inputs)
        except OSError as e:  # a read-only or full disk costs the cache, not the run
            log.warning("could not write the token cache %s (%s): continuing without it", path, e)
        return result


def _slice(
    whole: TokenizedSplit, a: int, b: int, first_example: int, counts: dict[str, int]
) -> TokenizedSplit:
    """Kept examples a..b of `whole` as a split of their own (views, no copies of ids)."""
    start, stop = int(whole.offsets[a]), int(whole.offsets[b])
    return TokenizedSplit(
        ids=whole.ids[start:stop],
        offsets=whole.offsets[a : b + 1] - start,
        prompt_lengths=whole.prompt_lengths[a:b],
        example_index=whole.example_index[a:b] - first_example,
        train_on_inputs=whole.train_on_inputs,
        counts=counts,
    )


def tokenize_dataset(
    dataset: FederatedDataset, tokenizer: Any, cfg: DataConfig
) -> dict[str, dict[str, TokenizedSplit]]:
    """Every split of every client (seen and unseen), from one batched pass over all texts."""
    clients = _clients(dataset)
    examples = [e for c in clients for s in SPLITS for e in getattr(c, s)]
    whole, status = _tokenize(examples, tokenizer, cfg)
    # bounds[i]..bounds[i+1]: positions of (client, split) number i among all examples;
    # cut[i]..cut[i+1]: its kept examples among those of `whole`
    bounds = np.cumsum([0] + [len(getattr(c, s)) for c in clients for s in SPLITS])
    cut = np.searchsorted(whole.example_index, bounds)
    splits: dict[str, dict[str, TokenizedSplit]] = {}
    i = 0
    for c in clients:
        splits[c.client_id] = {}
        for s in SPLITS:
            counts = _count(status[bounds[i] : bounds[i + 1]])
            splits[c.client_id][s] = _slice(
                whole, int(cut[i]), int(cut[i + 1]), int(bounds[i]), counts
            )
            i += 1
    return splits


def _compact(ids: np.ndarray) -> np.ndarray:
    """uint16 when every id fits (vocabularies under 65,536): half the file to write and read."""
    return ids.astype(np.uint16) if ids.size == 0 or int(ids.max()) < 2**16 else ids


def _write(path: Path, splits: dict[str, dict[str, TokenizedSplit]], train_on_inputs: bool) -> None:
    """One .npz holding every split back to back; written to a temp file, then renamed."""
    parts = [t for by_split in splits.values() for t in by_split.values()]
    sizes = [len(t) for t in parts]
    token_base = np.cumsum([0] + [len(t.ids) for t in parts])
    meta = {
        "format": CACHE_FORMAT,
        "clients": list(splits),
        "splits": list(SPLITS),
        "train_on_inputs": train_on_inputs,
    }
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "ids": _compact(np.concatenate([t.ids for t in parts] or [np.zeros(0, np.int32)])),
        # per-split offsets shifted onto the concatenated ids; one leading 0
        "offsets": np.concatenate(
            [np.zeros(1, np.int64)]
            + [t.offsets[1:] + base for t, base in zip(parts, token_base[:-1], strict=True)]
        ),
        "prompt_lengths": np.concatenate(
            [t.prompt_lengths for t in parts] or [np.zeros(0, np.int32)]
        ),
        "example_index": np.concatenate(
            [t.example_index for t in parts] or [np.zeros(0, np.int32)]
        ),
        "split_sizes": np.asarray(sizes, dtype=np.int64),
        "split_counts": np.asarray(
            [[t.counts[k] for k in COUNT_KEYS] for t in parts], dtype=np.int64
        ).reshape(len(parts), len(COUNT_KEYS)),
    }
    # the cache folder is shared by runs: only temps of writers that are gone are removed
    remove_stale_temps(path.parent, recursive=False)
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    log.info("cached tokenised clients in %s", path)


def _check_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """ValueError unless the arrays of a cache file fit together (a damaged file that
    still unzips must not hand out wrong tokens)."""
    ids, offsets, prompts = arrays["ids"], arrays["offsets"], arrays["prompt_lengths"]
    sizes, counts = arrays["split_sizes"], arrays["split_counts"]
    clients = meta.get("clients")
    if not isinstance(clients, list) or not all(isinstance(c, str) for c in clients):
        raise ValueError("no client list")
    n = len(prompts)
    if (
        ids.ndim != 1
        or offsets.shape != (n + 1,)
        or arrays["example_index"].shape != (n,)
        or sizes.shape != (len(clients) * len(SPLITS),)
        or counts.shape != (len(sizes), len(COUNT_KEYS))
        or not all(a.dtype.kind in "iu" for a in (ids, offsets, prompts, sizes, counts))
    ):
        raise ValueError("arrays of the wrong shape or type")
    lengths = np.diff(offsets)
    if n and (offsets[0] != 0 or offsets[-1] != len(ids) or (lengths < 1).any()):
        raise ValueError("inconsistent offsets")
    if (prompts < 0).any() or (prompts > lengths).any() or (sizes < 0).any():
        raise ValueError("inconsistent prompt lengths or split sizes")


def _read(path: Path, train_on_inputs: bool) -> dict[str, dict[str, TokenizedSplit]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    if meta.get("format") != CACHE_FORMAT or meta.get("splits") != list(SPLITS):
        raise ValueError(f"cache format {meta.get('format')}, expected {CACHE_FORMAT}")
    _check_arrays(arrays, meta)
    whole = TokenizedSplit(
        ids=arrays["ids"],
        offsets=arrays["offsets"],
        prompt_lengths=arrays["prompt_lengths"],
        example_index=arrays["example_index"],
        train_on_inputs=train_on_inputs,
    )
    bounds = np.concatenate([np.zeros(1, np.int64), np.cumsum(arrays["split_sizes"])])
    counts = arrays["split_counts"]
    if len(bounds) != len(meta["clients"]) * len(SPLITS) + 1 or bounds[-1] != len(whole):
        raise ValueError("inconsistent split table")
    splits: dict[str, dict[str, TokenizedSplit]] = {}
    i = 0
    for cid in meta["clients"]:
        splits[cid] = {}
        for s in SPLITS:
            split_counts = {k: int(v) for k, v in zip(COUNT_KEYS, counts[i], strict=True)}
            splits[cid][s] = _slice(whole, int(bounds[i]), int(bounds[i + 1]), 0, split_counts)
            i += 1
    return splits
