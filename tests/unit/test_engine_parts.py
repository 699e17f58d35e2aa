"""Engine building blocks: rank types, distributions, adapter host, dead components."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flexlora.adapters import AdapterHost, initial_factors, target_module_shapes
from flexlora.aggregation.base import GlobalUpdate
from flexlora.config import LoraSettings
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors
from flexlora.methods import zero_tail
from flexlora.ranks import (
    PAPER_RANK_TYPES,
    assign_rank_types,
    distribution_probabilities,
    resolve_rank_type,
)
from flexlora.rounds import build_rank_classes, revive_dead_components


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)  # test-only fixed base model
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).double().eval()


def test_paper_distributions_and_explicit_probabilities() -> None:
    assert distribution_probabilities("heavy-tail-light", 4) == [0.80, 0.05, 0.05, 0.10]
    assert distribution_probabilities("heavy-tail-strong", 4) == [0.05, 0.05, 0.10, 0.80]
    normal = distribution_probabilities("normal", 4)
    assert normal[1] + normal[2] > normal[0] + normal[3]  # the middle types dominate
    five = distribution_probabilities("normal", 5)
    assert math.isclose(sum(five), 1.0) and five.index(max(five)) == 2
    assert distribution_probabilities([0.5, 0.5], 2) == [0.5, 0.5]
    with pytest.raises(FlexLoraError, match="3 probabilities for 2 rank types"):
        distribution_probabilities([0.2, 0.3, 0.5], 2)
    with pytest.raises(FlexLoraError, match="sum to 1"):
        distribution_probabilities([0.2, 0.3], 2)
    with pytest.raises(FlexLoraError, match=r"unknown ranks\.distribution"):
        distribution_probabilities("skewed", 4)


def test_rank_assignment_is_seeded_and_follows_the_distribution() -> None:
    ids = [str(i) for i in range(4000)]
    probs = distribution_probabilities("heavy-tail-light", 4)
    a = assign_rank_types(ids, probs, np.random.default_rng(7))
    b = assign_rank_types(list(reversed(ids)), probs, np.random.default_rng(7))
    assert a == b  # independent of the order ids are given in
    share = np.bincount(list(a.values()), minlength=4) / len(ids)
    np.testing.assert_allclose(share, probs, atol=0.02)


def test_rank_types_resolve_per_module_and_cap_at_min_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shapes = {
        "l.0.self_attn.q_proj": (16, 16),
        "l.0.mlp.up_proj": (40, 16),
        "l.0.mlp.down_proj": (16, 40),
    }
    ranks = resolve_rank_type(PAPER_RANK_TYPES[2], shapes)  # {attention: 30, mlp: 200}
    assert ranks == {"l.0.self_attn.q_proj": 16, "l.0.mlp.up_proj": 16, "l.0.mlp.down_proj": 16}
    assert "capped at 16" in caplog.text
    assert resolve_rank_type({"attention": 2, "up_proj": 3, "mlp": 5}, shapes) == {
        "l.0.self_attn.q_proj": 2,
        "l.0.mlp.up_proj": 3,
        "l.0.mlp.down_proj": 5,
    }
    with pytest.raises(FlexLoraError, match=r"no rank for module l\.0\.mlp\.up_proj"):
        resolve_rank_type({"attention": 2}, shapes)


def test_types_that_cap_to_the_same_ranks_share_one_class() -> None:
    shapes = {"a.q_proj": (8, 8), "a.up_proj": (20, 8)}
    classes, type_to_class = build_rank_classes([2, 8, 200], shapes)
    assert [c.key for c in classes] == ["rank-2", "rank-8"]
    assert type_to_class == {0: "rank-2", 1: "rank-8", 2: "rank-8"}


def test_dead_components_get_a_fresh_A_row_and_the_update_is_unchanged() -> None:
    B = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # (2, 3): columns 1, 2 zero
    A = torch.tensor([[1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])  # (3, 2): row 2 zero
    out = revive_dead_components({"m": LoraFactors(B, A, 0.5)}, torch.Generator().manual_seed(0))[
        "m"
    ]
    assert torch.equal(out.A[:2], A[:2])  # live, or B-dead but A-alive: untouched
    assert out.A[2].abs().sum() > 0 and out.A[2].abs().max() <= 1 / math.sqrt(2)
    assert torch.equal(out.delta(), LoraFactors(B, A, 0.5).delta())


def test_zero_tail_keeps_shapes() -> None:
    f = LoraFactors(torch.ones(4, 3), torch.ones(3, 5), 2.0)
    z = zero_tail(f, 1)
    assert z.B.shape == (4, 3) and z.A.shape == (3, 5)
    assert z.B[:, 1:].abs().sum() == 0 and z.A[1:].abs().sum() == 0 and z.B[:, 0].sum() == 4


def test_adapter_host_swaps_factors_and_serves_w0_plus_dw() -> None:
    # Prepare: a float64 tiny Llama, two rank classes, random factors
    model = tiny_llama()
    ids = torch.tensor([[3, 7, 11, 19, 23]])
    with torch.no_grad():
        base_logits = model(ids).logits.clone()
    shapes = target_module_shapes(model, ["q_proj", "v_proj", "up_proj"])
    classes = {"rank-2": dict.fromkeys(shapes, 2), "rank-4": dict.fromkeys(shapes, 4)}
    host = AdapterHost(
        model, ["q_proj", "v_proj", "up_proj"], LoraSettings(alpha=8, dropout=0.0), classes
    )
    gen = torch.Generator().manual_seed(1)
    factors = {
        n: LoraFactors(
            torch.randn(o, 4, generator=gen, dtype=torch.float64),
            torch.randn(4, i, generator=gen, dtype=torch.float64),
            2.0,
        )
        for n, (o, i) in shapes.items()
    }
    # Execute: load into rank-4 and read back; serve a global update
    host.load("rank-4", factors)
    back = host.read("rank-4")
    dW = {n: GlobalUpdate(B=f.scaling * f.B, A=f.A) for n, f in factors.items()}
    with host.global_model(dW) as global_model, torch.no_grad():
        global_logits = global_model(ids).logits
    with host.global_model(None) as base_again, torch.no_grad():
        w0_logits = base_again(ids).logits
    # Assert: round trip, and the forward pass equals W0 + dW patched in by hand
    for n, f in factors.items():
        torch.testing.assert_close(back[n].B, f.B.float())
        assert back[n].scaling == 2.0  # alpha 8 / r 4
    reference = tiny_llama()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in dW:
                module.weight += dW[name].B @ dW[name].A  # (out, r) @ (r, in)
        expected = reference(ids).logits
    torch.testing.assert_close(global_logits, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(w0_logits, base_logits, rtol=0, atol=0)
    with pytest.raises(FlexLoraError, match="has rank 2 but the factors have rank 4"):
        host.load("rank-2", factors)


def test_initial_factors_follow_peft_default_init() -> None:
    f = initial_factors({"m": (6, 100)}, {"m": 3}, {"m": 1.0}, torch.Generator().manual_seed(0))[
        "m"
    ]
    assert f.B.abs().sum() == 0 and f.A.shape == (3, 100)
    assert f.A.abs().max() <= 0.1 and f.A.std() > 0.04  # U(-1/√in, 1/√in) has std 0.0577


def test_server_state_round_trips_through_torch_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flexlora.rounds import ServerState

    f = LoraFactors(torch.randn(4, 2), torch.randn(2, 3), 0.5)
    state = ServerState(
        round=2,
        client_class={"a": "rank-2", "b": "rank-4"},
        class_factors={"rank-2": {"m": f}},
        global_update={"m": GlobalUpdate(B=torch.randn(4, 3), A=torch.randn(3, 3))},
        merged=[{"m": GlobalUpdate(torch.randn(4, 1), torch.randn(1, 3), torch.tensor([2.0]))}],
        client_ranks={"a": {"m": 1}},
        history=[{"round": 1, "train_loss": 1.5}],
    )
    torch.save(state.state_dict(), tmp_path / "state.pt")
    # plain tensors and values only: loads without unpickling any class
    back = ServerState.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert back.round == 2 and back.client_class == state.client_class
    assert back.client_ranks == {"a": {"m": 1}} and back.history == state.history
    assert torch.equal(back.class_factors["rank-2"]["m"].B, f.B)  # type: ignore[index]
    assert torch.equal(back.global_update["m"].A, state.global_update["m"].A)  # type: ignore[index]
    assert back.class_factors["rank-2"]["m"].scaling == 0.5  # type: ignore[index]
    assert torch.equal(back.merged[0]["m"].singular_values, torch.tensor([2.0]))  # type: ignore[arg-type]


def test_a_declared_capacity_gets_the_largest_type_that_fits() -> None:
    from flexlora.rounds import type_for_capacity

    shapes = {"l.0.self_attn.q_proj": (16, 16), "l.0.mlp.up_proj": (40, 16)}
    types: list = [2, {"attention": 4, "mlp": 8}, 8, {"attention": 16, "mlp": 2}]
    assert type_for_capacity(types, shapes, 2) == 0
    assert type_for_capacity(types, shapes, 7) == 0  # type 1 needs 8 on the MLP
    assert type_for_capacity(types, shapes, 8) == 2  # 8 + 8 beats 4 + 8
    assert type_for_capacity(types, shapes, 16) == 3  # 16 + 2 beats 8 + 8
    with pytest.raises(FlexLoraError, match="max-rank 1, below every rank type"):
        type_for_capacity(types, shapes, 1)


def test_ranks_assign_refuses_an_index_outside_the_types() -> None:
    from flexlora.config import load_config

    with pytest.raises(FlexLoraError, match=r"ranks.assign.a: 3 is not a rank type index"):
        load_config(None, ["ranks.types=[2, 4, 8]", "ranks.assign={a: 3}"])
