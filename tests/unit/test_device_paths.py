"""The code paths that differ by device, on the CPU in every test run and on CUDA under
`pytest -m gpu` (benchmarks/gpu.py runs that on a lent GPU machine).

On the CPU the exact dense SVD forms dW through oneDNN and takes its eigenvectors from
scipy's subset solver; on CUDA it uses torch.matmul and torch's eigh. Greedy decoding
checks for the end of every row each step on the CPU and every `_STOP_CHECK_EVERY` steps
on an accelerator. Each test holds the device's answer to a float64 CPU reference or to
transformers' own generate on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine_fixtures import force_eos_row_by_row, make_tiny_model
from flexlora.aggregation import TargetSpec, get_aggregation
from flexlora.config import DataConfig
from flexlora.data.synthetic import build_synthetic_suite
from flexlora.evaluate import _STOP_CHECK_EVERY, _generate_batch_hf, encode_examples, generate_batch
from flexlora.lora import LoraFactors, lora_scaling
from flexlora.svd import SUBSET_MIN_SIZE, truncated_svd_of_product

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _truncation_f64(B: torch.Tensor, A: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(B.double().cpu() @ A.double().cpu(), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]  # (out, r) · (r,) @ (r, in)


def _relative(got: torch.Tensor, exact: torch.Tensor) -> float:
    difference = got.double().cpu() - exact
    return float(torch.linalg.matrix_norm(difference) / torch.linalg.matrix_norm(exact))


@pytest.mark.parametrize("device", DEVICES)
def test_exact_svd_of_a_large_stacked_product_on_the_device(device: str) -> None:
    # R = 600 >= min(out, in) = 520 >= SUBSET_MIN_SIZE: dW is formed, and on the CPU the
    # subset eigensolver runs; float32 factors, as the aggregation computes by default.
    g = torch.Generator().manual_seed(0)
    B = torch.randn(640, 600, generator=g) / 25
    A = torch.randn(600, 520, generator=g) * (0.97 ** torch.arange(600))[:, None]
    assert min(B.shape[0], A.shape[1]) >= SUBSET_MIN_SIZE
    U, S, Vh, info = truncated_svd_of_product(B.to(device), A.to(device), 40)
    assert info.path == "dense_exact"
    assert U.device.type == S.device.type == Vh.device.type == device
    assert U.dtype == torch.float32
    for r in (1, 8, 40):
        got = (U[:, :r] * S[:r]) @ Vh[:r]  # (out, r) · (r,) @ (r, in)
        assert _relative(got, _truncation_f64(B, A, r)) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_flexlora_aggregation_on_the_device_matches_float64(device: str) -> None:
    # Two modules: one factored (R = 12 < 48), one dense (R = 72 >= 48); mixed ranks.
    g = torch.Generator().manual_seed(1)
    ranks = {"small": [2, 4, 6], "large": [16, 24, 32]}
    clients: list[dict[str, LoraFactors]] = [{}, {}, {}]
    for module, module_ranks in ranks.items():
        for k, r in enumerate(module_ranks):
            B = torch.randn(64, r, generator=g)
            A = torch.randn(r, 48, generator=g)
            clients[k][module] = LoraFactors(B.to(device), A.to(device), lora_scaling(16.0, r))
    weights = [1.0, 2.0, 3.0]
    targets: dict[Hashable, TargetSpec] = {
        k: TargetSpec(
            {m: rs[k] for m, rs in ranks.items()}, {m: 16.0 / rs[k] for m, rs in ranks.items()}
        )
        for k in range(3)
    }
    result = get_aggregation("flexlora").aggregate(clients, weights, targets, {})
    assert result.diagnostics["svd_mode"] == {"small": "factored", "large": "dense_exact"}
    assert result.client_factors is not None
    for module, module_ranks in ranks.items():
        # dW = Σ p_k s_k B_k A_k in float64 on the CPU
        dW = sum(
            (w / sum(weights))
            * c[module].scaling
            * (c[module].B.double().cpu() @ c[module].A.double().cpu())
            for c, w in zip(clients, weights, strict=True)
        )
        assert isinstance(dW, torch.Tensor)
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        for k, r in enumerate(module_ranks):
            f = result.client_factors[k][module]
            assert f.B.device.type == f.A.device.type == device
            exact = (U[:, :r] * S[:r]) @ Vh[:r]  # (out, r) · (r,) @ (r, in)
            assert _relative(f.scaling * (f.B @ f.A), exact) < 1e-5


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return folder, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_decoding_on_the_device_equals_generate_and_stops_early(
    device: str, tiny_llama: tuple[Path, Any]
) -> None:
    folder, tok = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.nn.Module.to(model, device)  # (transformers' own `to` is typed for its decorator)
    suite = build_synthetic_suite({}, seed=0)
    examples = [ex for client in list(suite.clients.values())[:3] for ex in client.test[:2]]
    encoded = encode_examples(tok, examples, DataConfig(template="alpaca", max_length=128))
    prompts = sorted((e.prompt_ids for e in encoded), key=len, reverse=True)
    kwargs: dict[str, Any] = {
        "pad_token_id": int(tok.pad_token_id),
        "max_new_tokens": 8,
        "device": device,
    }
    with torch.inference_mode():
        lean = generate_batch(model, prompts, eos_token_id=int(tok.eos_token_id), **kwargs)
        hf = _generate_batch_hf(model, prompts, eos_token_id=int(tok.eos_token_id), **kwargs)
    assert lean == hf
    assert any(len(row) == 8 for row in lean)

    # Rows 0, 1, 2 answer 0, 1, 2 tokens (EOS forced through the output layer at its
    # c-th call): every row has finished after the 3rd forward.
    eos = int(tok.eos_token_id)
    calls, handle = force_eos_row_by_row(model, eos)
    try:
        with torch.inference_mode():
            forced = generate_batch(model, prompts[:3], eos_token_id=eos, **kwargs)
            forwards = len(calls)
            calls.clear()
            forced_hf = _generate_batch_hf(model, prompts[:3], eos_token_id=eos, **kwargs)
    finally:
        handle.remove()
    assert forced == forced_hf
    assert [len(row) for row in forced] == [0, 1, 2]
    # The loop reads "all finished" on the host every step on the CPU, and every
    # _STOP_CHECK_EVERY steps elsewhere: it stops at the first check after the 3rd step.
    every = 1 if device == "cpu" else _STOP_CHECK_EVERY
    assert forwards == math.ceil(3 / every) * every
