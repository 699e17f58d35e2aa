"""Property-based tests (hypothesis): damaged and random input thrown at every loader.

Each property: the loader either accepts its input or raises `FlexLoraError` with one
line of text, never anything else (a traceback is a flexlora bug, not the user's
mistake). Where acceptance has a meaning, it is checked too: an accepted config saves
and reloads to itself (what `--resume` relies on), a damaged token cache is rebuilt to
exactly the tokens of a fresh tokenisation.

Budget: EXAMPLES examples per property, half for the two torch-file ones (420 in all,
12-16 s for the file on a shared 2-core CPU); FLEXLORA_FUZZ_EXAMPLES raises it for a
longer hunt. No example database (nothing written to the checkout); a failure prints
the smallest input that shows it. Inputs that once failed are pinned with @example or
in test_values_python_cannot_hold_are_refused_in_one_line.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from fixtures.data_fixtures import WORDS, dolly_records, make_bpe_tokenizer, record
from flexlora.config import (
    DataConfig,
    ExperimentConfig,
    UnseenConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    yaml_load,
)
from flexlora.data.dataset import load_federated_dataset
from flexlora.data.tokenize import TokenizedCache, tokenize_dataset
from flexlora.data.types import ClientData, Example, FederatedDataset
from flexlora.errors import FlexLoraError
from flexlora.experiment import validate_experiment
from flexlora.lora import LoraFactors
from flexlora.outputs import CHECKPOINT, METRICS, RunWriter, read_checkpoint
from flexlora.peft_io import CONFIG_NAME, WEIGHTS_NAME, read_adapter, write_adapter
from flexlora.rounds import Server, initial_state

# per property (the torch-file ones get half); FLEXLORA_FUZZ_EXAMPLES=2000 for a long hunt
EXAMPLES = int(os.environ.get("FLEXLORA_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T = TypeVar("T")


def accepts_or_refuses(load: Callable[[], T]) -> T | FlexLoraError:
    """`load()`'s result, or the FlexLoraError it raised (checked to be one clear line).
    Any other exception propagates and fails the property."""
    try:
        result = load()
    except FlexLoraError as e:
        _event("refused")
        message = str(e)
        assert message.strip(), f"{type(e).__name__} with no message"
        assert "\n" not in message, f"a user error is one line, got {message!r}"
        return e
    _event("accepted")
    return result


def _event(name: str) -> None:
    """Count `name` in hypothesis's statistics (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(name)


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by every example)."""
    with tempfile.TemporaryDirectory(prefix="flexlora-fuzz-") as d:
        yield Path(d)


# --- value strategies ---------------------------------------------------------------

NASTY_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        -0.0,
        1e-300,
        1e308,
        -1e308,
        2**63,
        -(2**63),
        10**400,
        math.nan,
        math.inf,
        -math.inf,
    ]
)
HUGE = ["1" * 5000, "[" * 3000, "9" * 400]  # an int json / YAML / float cannot hold
NASTY_STRINGS = st.sampled_from(
    [*HUGE, "", " ", "3e-4", ".nan", "-.inf", "1e400", "null", "~", "yes", "cuda:x",
     "builtin:", "../..", "\x00", "é", "2001-12-14", "[1,", "{a: 1", "*ref",
     "!!python/object:os.system"]
)  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    NASTY_NUMBERS,
    NASTY_STRINGS,
)
JSON_LIKE = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def _leaf_paths(tree: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, f"{path}."))
    return paths


DEFAULT_TREE = config_to_dict(ExperimentConfig())
KNOWN_PATHS = _leaf_paths(DEFAULT_TREE)
# plausible values for the keys that take them, so that many examples get past the types
GOOD_VALUES = st.sampled_from(
    [
        {"method": "flexlora"}, {"method": "fedit"}, {"method": "hetlora"}, {"method": "ffa"},
        {"ranks.types": [2, 4]}, {"ranks.types": [{"attention": 2, "mlp": 4}]},
        {"ranks.distribution": [0.5, 0.5]}, {"ranks.distribution": "heavy-tail-light"},
        {"federation.lr": "3e-4"}, {"federation.max_grad_norm": None},
        {"data.kind": "jsonl"}, {"data.partition": "iid"}, {"data.num_clients": 3},
        {"data.unseen.count": 1}, {"model.device": "cpu"}, {"eval.mode": "teacher-forced"},
        {"method_options": {"gamma": 0.5}}, {"method_options": {"threshold": 0.9}},
    ]
)  # fmt: skip
DOTTED_KEYS = st.one_of(
    st.sampled_from(KNOWN_PATHS),
    st.builds(lambda p, k: f"{p}.{k}", st.sampled_from(KNOWN_PATHS), st.text(max_size=6)),
    st.text(max_size=12),
)
OVERRIDES = st.dictionaries(DOTTED_KEYS, JSON_LIKE, max_size=2)


def _near(default: Any) -> st.SearchStrategy[Any]:
    """Values of the default's own type, in and just out of range (and NaN, Inf)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-2, 40)
    if isinstance(default, float):
        return st.floats(-2, 40) | st.sampled_from([0.0, 1e-4, math.nan, math.inf])
    return JSON_LIKE


SCALAR_DEFAULTS = {
    path: value
    for path in KNOWN_PATHS
    if not isinstance(value := _lookup(DEFAULT_TREE, path), (dict, list, type(None)))
}
PLAUSIBLE = st.sampled_from(sorted(SCALAR_DEFAULTS)).flatmap(
    lambda path: st.tuples(st.just(path), _near(SCALAR_DEFAULTS[path]))
)


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = node[k] = {}
        node = child
    node[keys[-1]] = value


def _accepted_config_survives_a_save(cfg: ExperimentConfig) -> None:
    """What run saves (config.yaml and the checkpoint) reads back as the same config."""
    saved = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    again = config_from_dict(yaml_load(saved))
    assert yaml.safe_dump(config_to_dict(again), sort_keys=False) == saved


@FUZZ
@given(
    st.one_of(st.just({}), OVERRIDES),
    st.lists(GOOD_VALUES, max_size=3),
    st.lists(PLAUSIBLE, max_size=3),
    st.one_of(
        st.just([]),
        st.lists(st.text(max_size=30), max_size=2),
        st.lists(st.builds("{}={}".format, DOTTED_KEYS, NASTY_STRINGS), max_size=2),
    ),
)
def test_random_set_overrides_are_accepted_or_refused_in_one_line(
    values: dict[str, Any],
    good: list[dict[str, Any]],
    plausible: list[tuple[str, Any]],
    raw: list[str],
) -> None:
    overrides = [f"{k}={_yaml_text(v)}" for choice in good for k, v in choice.items()]
    overrides += [f"{k}={_yaml_text(v)}" for k, v in plausible]
    overrides += [f"{k}={_yaml_text(v)}" for k, v in values.items()]
    overrides += raw  # anything at all on the command line, `=` or not
    cfg = accepts_or_refuses(lambda: load_config(None, overrides))
    if isinstance(cfg, ExperimentConfig):
        _accepted_config_survives_a_save(cfg)
        accepts_or_refuses(lambda: validate_experiment(cfg))


CONFIG_FILE_TEXT = st.one_of(
    st.text(max_size=200),  # random YAML text
    st.builds("{}: {}\n".format, st.sampled_from(list(DEFAULT_TREE)), NASTY_STRINGS),
    st.builds(
        lambda changes: _yaml_text({**DEFAULT_TREE, **changes}),
        st.dictionaries(st.sampled_from(list(DEFAULT_TREE)), JSON_LIKE, max_size=3),
    ),
    st.builds(  # a real config, with a key repeated, cut short or a line dropped
        lambda cut, dup: (
            yaml.safe_dump(DEFAULT_TREE, sort_keys=False)[:cut]
            + ("\nseed: 1\nseed: 2\n" if dup else "")
        ),
        st.integers(0, 2000),
        st.booleans(),
    ),
)


@FUZZ
@given(
    st.one_of(
        CONFIG_FILE_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
        CONFIG_FILE_TEXT.map(lambda t: t.encode("utf-16")),
        st.binary(max_size=200),
    ),
    st.dictionaries(DOTTED_KEYS, JSON_LIKE, max_size=2),
)
@example(b"1: 2\nseed: 0\n", {})  # found: a non-string key crashed sorting the unknown keys
@example(b'"a\\nb": 1\n', {})  # found: a key with a line break made a two-line error
def test_random_config_files_are_accepted_or_refused_in_one_line(
    content: bytes, values: dict[str, Any]
) -> None:
    with scratch() as d:
        path = d / "config.yaml"
        path.write_bytes(content)
        overrides = [f"{k}={_yaml_text(v)}" for k, v in values.items()]
        cfg = accepts_or_refuses(lambda: load_config(path, overrides))
        if isinstance(cfg, ExperimentConfig):
            _accepted_config_survives_a_save(cfg)


@FUZZ
@given(st.dictionaries(DOTTED_KEYS, JSON_LIKE, max_size=6))
@example({"flower.client_cpus": 10**400})  # found: OverflowError turning the int into a float
def test_random_config_trees_are_accepted_or_refused_in_one_line(values: dict[str, Any]) -> None:
    tree = json.loads(json.dumps(DEFAULT_TREE))
    for key, value in values.items():
        _set_dotted(tree, key, value)
    cfg = accepts_or_refuses(lambda: config_from_dict(tree))
    if isinstance(cfg, ExperimentConfig):
        _accepted_config_survives_a_save(cfg)


# --- damaged data files -------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, content: bytes) -> bytes:
    """`content` damaged one of the ways a real file gets damaged."""
    how = draw(
        st.sampled_from(["cut", "flip", "insert", "random", "utf16", "latin1", "huge", "none"])
    )
    if how == "huge":  # what Python cannot hold: a 5,000-digit int, 3,000 levels of nesting
        at = draw(st.integers(0, len(content)))
        return content[:at] + draw(st.sampled_from([b"1" * 5000, b"[" * 3000])) + content[at:]
    if how in ("cut", "flip") and not content:
        how = "random"
    if how == "cut":
        return content[: draw(st.integers(0, max(0, len(content) - 1)))]
    if how == "flip":
        out = bytearray(content)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "insert":
        at = draw(st.integers(0, len(content)))
        return content[:at] + draw(st.binary(min_size=1, max_size=8)) + content[at:]
    if how == "random":
        return draw(st.binary(max_size=300))
    if how in ("utf16", "latin1"):
        try:
            text = content.decode("utf-8").replace("task", "tâsk")  # something non-ASCII
        except UnicodeDecodeError:  # a binary file: re-encoding is random damage
            return draw(st.binary(max_size=300))
        return text.encode("utf-16" if how == "utf16" else "latin-1", "replace")
    return content


@st.composite
def records(draw: st.DrawFn, fields: tuple[str, ...]) -> list[Any]:
    """Records of the right shape, some of them with fields of the wrong type or missing."""
    out: list[Any] = []
    for i in range(draw(st.integers(0, 12))):
        rec: dict[str, Any] = dict(
            zip(fields, (f"task {i}?", f"ctx {i}", f"out {i}", f"cat{i % 3}"), strict=True)
        )
        if draw(st.integers(0, 15)) == 0:  # a bad record
            kind = draw(st.sampled_from(["type", "drop", "value", "extra"]))
            field = draw(st.sampled_from(fields))
            if kind == "type":
                rec[field] = draw(JSON_LIKE)
            elif kind == "drop":
                rec.pop(field)
            elif kind == "extra":
                rec[draw(st.text(max_size=6))] = draw(JSON_LIKE)
            else:
                out.append(draw(JSON_LIKE))
                continue
        out.append(rec)
    return out


def _with_duplicate_key(text: str, field: str) -> str:
    """JSON text where the first record names `field` twice (json keeps the last)."""
    return text.replace(f'"{field}": ', f'"{field}": 7, "{field}": ', 1)


DATA_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "partition": st.sampled_from(["natural", "iid", "dirichlet"]),
        "num_clients": st.integers(1, 4),
        "label_field": st.sampled_from(["category", "instruction", "missing"]),
        "max_train_per_client": st.integers(0, 3),
        "max_eval_per_client": st.integers(0, 2),
        "min_client_size": st.integers(0, 3),
        "field_map": st.sampled_from([{}, {"input": "context"}, {"nope": "x"}]),
    },
)


def _load(cfg_kwargs: dict[str, Any], unseen: int | None, seed: int) -> None:
    def load() -> FederatedDataset:
        cfg = DataConfig(**cfg_kwargs, unseen=UnseenConfig(count=unseen))
        return load_federated_dataset(cfg, seed)

    dataset = accepts_or_refuses(load)
    if isinstance(dataset, FederatedDataset):
        for c in [*dataset.seen.values(), *dataset.unseen.values()]:
            assert all(isinstance(e.output, str) for e in c.train + c.eval + c.test)


@FUZZ
@given(st.data(), DATA_OPTIONS, st.sampled_from([None, 0, 1, 5]), st.booleans(), st.booleans())
def test_damaged_jsonl_and_dolly_files_are_accepted_or_refused(
    data: st.DataObject, options: dict[str, Any], unseen: int | None, as_list: bool, dolly: bool
) -> None:
    fields = (
        ("instruction", "context", "response", "category")
        if dolly
        else ("instruction", "input", "output", "category")
    )
    recs = data.draw(records(fields))
    text = json.dumps(recs) if as_list else "".join(json.dumps(r) + "\n" for r in recs)
    if recs and data.draw(st.booleans()):
        text = _with_duplicate_key(text, data.draw(st.sampled_from(fields)))
    content = text.encode("utf-8")
    if data.draw(st.booleans()):
        content = data.draw(damaged(content))
    with scratch() as d:
        if dolly:
            (d / "databricks-dolly-15k.jsonl").write_bytes(content)
            path = d if data.draw(st.booleans()) else d / "databricks-dolly-15k.jsonl"
        else:
            path = d / ("data.json" if as_list else "data.jsonl")
            path.write_bytes(content)
        _load({"kind": "dolly" if dolly else "jsonl", "path": str(path), **options}, unseen, 0)


@FUZZ
@given(st.data(), DATA_OPTIONS, st.sampled_from([None, 0, 1]))
def test_damaged_flexlora_ni_folders_are_accepted_or_refused(
    data: st.DataObject, options: dict[str, Any], unseen: int | None
) -> None:
    options.pop("field_map", None)
    with scratch() as d:
        files = {}
        for cid in ("1", "2"):
            for prefix, n in (("training", 4), ("eval", 1), ("test", 1)):
                recs = [record(i, f"Cat{cid}") for i in range(n)]
                files[f"local_{prefix}_{cid}.json"] = json.dumps(recs)
        victim = data.draw(st.sampled_from(sorted(files)))
        text = files[victim]
        if data.draw(st.booleans()):
            bad = data.draw(records(("instruction", "input", "output", "category")))
            text = json.dumps(data.draw(st.one_of(st.just(bad), JSON_LIKE)))
        if data.draw(st.booleans()):
            text = _with_duplicate_key(text, "output")
        for name, body in files.items():
            (d / name).write_text(body)
        content = text.encode("utf-8")
        if data.draw(st.booleans()):
            content = data.draw(damaged(content))
        (d / victim).write_bytes(content)
        if data.draw(st.booleans()):
            (d / data.draw(st.sampled_from(sorted(files)))).unlink()
        _load({"kind": "flexlora-ni", "path": str(d), **options}, unseen, 0)


# --- damaged PEFT adapters ----------------------------------------------------------

MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")
ADAPTER_CONFIG = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "target_modules": ["q_proj", "down_proj"],
    "bias": "none",
    "r": 2,
    "lora_alpha": 4,
}


def _adapter_files() -> dict[str, bytes]:
    torch.manual_seed(0)
    factors = {
        m: LoraFactors(B=torch.randn(6, 2), A=torch.randn(2, 5), scaling=2.0) for m in MODULES
    }
    with scratch() as d:
        write_adapter(d / "a", factors, ADAPTER_CONFIG)
        return {name: (d / "a" / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


ADAPTER = _adapter_files()
CONFIG_FIELDS = st.sampled_from(
    ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "peft_type", "bias",
     "use_dora", "init_lora_weights", "modules_to_save", "target_modules"]
)  # fmt: skip
PATTERNS = st.dictionaries(
    st.one_of(
        st.sampled_from(["q_proj", "^model", ".*", "(", "[a-", "down_proj$"]), st.text(max_size=6)
    ),
    LEAVES,
    max_size=3,
)


@settings(FUZZ, max_examples=EXAMPLES)
@given(
    st.data(),
    st.dictionaries(CONFIG_FIELDS | st.text(max_size=6), JSON_LIKE | PATTERNS, max_size=3),
)
def test_damaged_adapters_are_accepted_or_refused(
    data: st.DataObject, config_changes: dict[str, Any]
) -> None:
    config = {**json.loads(ADAPTER[CONFIG_NAME]), **config_changes}
    config_text = json.dumps(config).encode()
    if data.draw(st.booleans()):
        config_text = data.draw(damaged(config_text))
    weights = ADAPTER[WEIGHTS_NAME]
    if data.draw(st.booleans()):
        weights = data.draw(damaged(weights))
    with scratch() as d:
        (d / CONFIG_NAME).write_bytes(config_text)
        (d / WEIGHTS_NAME).write_bytes(weights)
        adapter = accepts_or_refuses(lambda: read_adapter(d))
        if not isinstance(adapter, FlexLoraError):
            for f in adapter.factors.values():
                assert bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all())
                assert math.isfinite(f.scaling)


# --- damaged checkpoints ------------------------------------------------------------


def _checkpoint_bytes() -> bytes:
    cfg = ExperimentConfig()
    shapes = {m: (6, 5) for m in MODULES}
    server = Server.build(cfg, shapes, ["1", "2", "3"])
    with scratch() as d:
        RunWriter(d, cfg).checkpoint(initial_state(server), 1.5)
        return (d / CHECKPOINT).read_bytes()


CHECKPOINT_BYTES = _checkpoint_bytes()


def _intact_state() -> dict[str, Any]:
    with scratch() as d:
        (d / CHECKPOINT).write_bytes(CHECKPOINT_BYTES)
        (d / METRICS).write_text("")
        return read_checkpoint(d).state


CHECKPOINT_STATE = _intact_state()


@settings(FUZZ, max_examples=EXAMPLES // 2)
@given(damaged(CHECKPOINT_BYTES), st.sampled_from(["", '{"round": 1}\n', "\xff"]))
# found: torch.load checks no CRC, so a flipped byte resumed on a different config
@example(CHECKPOINT_BYTES.replace(b"auto", b"autp", 1), "")
def test_damaged_checkpoints_are_accepted_or_refused(content: bytes, metrics: str) -> None:
    with scratch() as d:
        (d / CHECKPOINT).write_bytes(content)
        (d / METRICS).write_text(metrics, encoding="latin-1")
        checkpoint = accepts_or_refuses(lambda: read_checkpoint(d))
        if not isinstance(checkpoint, FlexLoraError):  # damage outside the data: all intact
            assert checkpoint.config == DEFAULT_TREE and checkpoint.seconds == 1.5
            assert checkpoint.state == CHECKPOINT_STATE


# --- damaged token caches -----------------------------------------------------------


def _federation() -> FederatedDataset:
    rng = np.random.default_rng(3)

    def examples(n: int) -> list[Example]:
        return [
            Example(" ".join(rng.choice(WORDS, 4)), "", " ".join(rng.choice(WORDS, 3)), "c")
            for _ in range(n)
        ]

    seen = {f"c{k}": ClientData(f"c{k}", examples(4), examples(1), examples(1)) for k in range(3)}
    return FederatedDataset(seen, {"u": ClientData("u", examples(2), [], examples(1))}, "fuzz")


TOKENIZER = make_bpe_tokenizer([" ".join(WORDS)] * 20)
CACHE_DATA = _federation()
CACHE_CFG = DataConfig(kind="jsonl", path="x", template="plain", max_length=40)
FRESH = tokenize_dataset(CACHE_DATA, TOKENIZER, CACHE_CFG)


def _cache_bytes() -> tuple[str, bytes]:
    with scratch() as d:
        result = TokenizedCache(d).load_or_tokenize(CACHE_DATA, TOKENIZER, CACHE_CFG)
        return result.key, TokenizedCache(d).path_for(result.key).read_bytes()


CACHE_KEY, CACHE_BYTES = _cache_bytes()


def _same_tokens(splits: dict[str, Any]) -> bool:
    return splits.keys() == FRESH.keys() and all(
        np.array_equal(splits[c][s].ids, FRESH[c][s].ids)
        and np.array_equal(splits[c][s].offsets, FRESH[c][s].offsets)
        and np.array_equal(splits[c][s].prompt_lengths, FRESH[c][s].prompt_lengths)
        for c in FRESH
        for s in FRESH[c]
    )


@settings(FUZZ, max_examples=EXAMPLES // 2)
@given(damaged(CACHE_BYTES))
@example(b"")  # found: EOFError, not caught, crashed every later run
@example(CACHE_BYTES[: len(CACHE_BYTES) // 2])  # found: zipfile.BadZipFile, the same
def test_a_damaged_token_cache_is_rebuilt_never_a_crash(content: bytes) -> None:
    with scratch() as d:
        cache = TokenizedCache(d)
        cache.path_for(CACHE_KEY).write_bytes(content)
        first = cache.load_or_tokenize(CACHE_DATA, TOKENIZER, CACHE_CFG)
        # whatever the file held, the tokens are those of a fresh tokenisation ...
        assert _same_tokens(first.splits)
        # ... and the file was rebuilt: the next run loads it
        second = cache.load_or_tokenize(CACHE_DATA, TOKENIZER, CACHE_CFG)
        assert second.from_cache and _same_tokens(second.splits)


@pytest.mark.parametrize("huge", HUGE)
def test_values_python_cannot_hold_are_refused_in_one_line(huge: str) -> None:
    """Found by the properties: a 5,000-digit int or 3,000 levels of nesting made json and
    YAML raise ValueError / RecursionError, and a 400-digit int an OverflowError, each a
    traceback instead of one line, in every loader below."""
    with scratch() as d:
        (d / "c.yaml").write_text(f"federation:\n  lr: {huge}\n")
        (d / "data.jsonl").write_text(f'{{"instruction": {huge}}}\n')
        (d / "data.json").write_text(f'[{{"instruction": {huge}}}]')
        adapter = d / "adapter"
        adapter.mkdir()
        (adapter / WEIGHTS_NAME).write_bytes(ADAPTER[WEIGHTS_NAME])
        (adapter / CONFIG_NAME).write_text(f'{{"peft_type": "LORA", "lora_alpha": {huge}}}')
        loads: list[Callable[[], object]] = [
            lambda: load_config(None, [f"federation.lr={huge}"]),
            lambda: load_config(d / "c.yaml"),
            lambda: load_federated_dataset(DataConfig(kind="jsonl", path=str(d / "data.jsonl")), 0),
            lambda: load_federated_dataset(DataConfig(kind="jsonl", path=str(d / "data.json")), 0),
            lambda: read_adapter(adapter),
        ]
        for load in loads:
            assert isinstance(accepts_or_refuses(load), FlexLoraError)


def test_the_fixtures_are_sound() -> None:
    """The undamaged inputs the properties start from are accepted."""
    assert read_adapter_ok()
    assert CHECKPOINT_STATE["round"] == 0 and CHECKPOINT_STATE["client_class"]
    with scratch() as d:
        path = d / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in dolly_records(12)))
        dataset = load_federated_dataset(DataConfig(kind="dolly", path=str(path)), 0)
        assert dataset.seen


def read_adapter_ok() -> bool:
    with scratch() as d:
        for name, content in ADAPTER.items():
            (d / name).write_bytes(content)
        return set(read_adapter(d).factors) == set(MODULES)


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
