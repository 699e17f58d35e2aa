"""The shipped base model `builtin:flexlora-tiny` and the command that builds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexlora.assets import BUILTIN_MODELS, resolve_model_path
from flexlora.data.synthetic import build_synthetic_suite
from flexlora.errors import FlexLoraError
from flexlora.tools import build_tiny_model as btm

MAX_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def folder() -> str:
    return resolve_model_path("builtin:flexlora-tiny")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_resolve_model_path() -> None:
    assert resolve_model_path("builtin:flexlora-tiny") == str(BUILTIN_MODELS["flexlora-tiny"])
    assert resolve_model_path(str(BUILTIN_MODELS["flexlora-tiny"])) == str(
        BUILTIN_MODELS["flexlora-tiny"]
    )  # a local folder that exists: as given
    with pytest.raises(FlexLoraError, match="model folder not found: /some/local/model"):
        resolve_model_path("/some/local/model")  # a local path that does not: said so
    assert resolve_model_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    with pytest.raises(
        FlexLoraError, match=r"unknown builtin model 'nope' \(known: flexlora-tiny\)"
    ):
        resolve_model_path("builtin:nope")


def test_shipped_folder_is_complete_and_small(folder: str) -> None:
    files = {p.name: p.stat().st_size for p in Path(folder).iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json"}  # fmt: skip
    assert expected <= set(files)
    assert sum(files.values()) <= MAX_BYTES


def test_tokenizer_loads_offline_with_special_tokens_and_is_lossless(folder: str) -> None:
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    )
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    ids = tok("Add 7 to 25.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert [tok.decode([i]) for i in ids[-3:]] == ["2", "5", "."]  # digits are single tokens
    suite = build_synthetic_suite(
        {"train_per_client": 2, "eval_per_client": 0, "test_per_client": 1}, seed=0
    )
    for client in suite.clients.values():
        text = btm.format_example(client.train[0])
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_model_loads_offline_and_runs_forward_and_generate(folder: str) -> None:
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok)
    assert (
        model.config.eos_token_id == tok.eos_token_id
        and model.config.pad_token_id == tok.pad_token_id
    )
    batch = tok(["Reverse the words.", "What is 3 plus 4?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(
            **batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_build_info_records_a_finite_final_loss(folder: str) -> None:
    info = json.loads((Path(folder) / "build_info.json").read_text())
    assert np.isfinite(info["final_loss"]) and info["build_config"]["vocab_size"] >= 1000


def test_pretraining_corpus_is_deterministic() -> None:
    def docs(seed: int) -> list[tuple[str, str]]:
        rng = np.random.Generator(np.random.PCG64(seed))
        return btm.corpus_documents(60, rng, text_fraction=0.2)

    a = docs(0)
    assert a == docs(0) and a != docs(1)
    prompts = [c for c, _ in a if c]
    assert len(prompts) == 60 - 12
    assert all(c.startswith("Below is an instruction") for c in prompts)
    assert all(c.endswith("### Response:\n") for c in prompts)
    assert all(t.strip() for _, t in a)


def test_documents_are_tokenised_with_loss_on_the_target_only(folder: str) -> None:
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    docs = btm.corpus_documents(20, np.random.Generator(np.random.PCG64(0)), text_fraction=0.2)
    for (context, target), (ids, labels) in zip(
        docs, btm.tokenize_documents(tok, docs), strict=True
    ):
        assert ids == tok(context + target)["input_ids"] + [tok.eos_token_id]  # as if joined
        n_context = len(tok(context)["input_ids"])
        assert labels[:n_context] == [-100] * n_context
        assert labels[n_context:] == ids[n_context:]


def test_the_shipped_build_takes_the_loss_on_every_token_but_bos(folder: str) -> None:
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    rng = np.random.Generator(np.random.PCG64(1))
    docs = btm.corpus_documents(30, rng, text_fraction=0.1, world_fraction=0.5)
    assert sum(c.count("From the notes") + c.count("Read the notes") + c.count("Look up the")
               for c, _ in docs) >= 10  # fmt: skip
    assert btm.BuildConfig().loss_on_context
    for ids, labels in btm.tokenize_documents(tok, docs, loss_on_context=True):
        assert labels == [-100, *ids[1:]] and ids[0] == tok.bos_token_id


def test_pack_cuts_documents_into_rows() -> None:
    docs = [
        ([1, 5, 6, 2], [-100, 5, 6, 2]),
        ([1, 7, 2], [-100, -100, 2]),
        ([1, 8, 2], [-100, 8, 2]),
    ]
    ids, labels = btm.pack(docs, block_size=4)
    # 1 5 6 2 | 1 7 2 1 | (8 2 dropped: not a whole row)
    assert ids.tolist() == [[1, 5, 6, 2], [1, 7, 2, 1]]
    assert labels.tolist() == [[-100, 5, 6, 2], [-100, -100, 2, -100]]


def test_bad_build_config_raises() -> None:
    with pytest.raises(FlexLoraError, match="hidden_size must divide by num_heads"):
        btm.BuildConfig(hidden_size=130)
    with pytest.raises(FlexLoraError, match="sum to less than 1"):
        btm.BuildConfig(text_fraction=0.5, world_fraction=0.5)


def test_smoke_build_writes_a_loadable_folder_atomically(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    loss = btm.build(btm.SMOKE_CONFIG, out)
    assert np.isfinite(loss)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.hidden_size == btm.SMOKE_CONFIG.hidden_size and tok.pad_token == "<pad>"
    before = (out / "model.safetensors").read_bytes()

    class Broken:
        pad_token_id = 3

        def save_pretrained(self, _: Path) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        btm.write_folder(model, Broken(), out, meta={})  # type: ignore[arg-type]
    assert (out / "model.safetensors").read_bytes() == before  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temp folder left behind
