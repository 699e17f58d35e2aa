"""Reading and writing PEFT LoRA adapter folders (flexlora.peft_io), on hand-made folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file, save_file

from flexlora.aggregation.base import GlobalUpdate
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors
from flexlora.peft_io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    exact_pattern_key,
    match_pattern_key,
    module_rank_and_alpha,
    read_adapter,
    write_adapter,
    write_global_adapter,
)

PREFIX = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj"
Q1 = "model.layers.1.self_attn.q_proj"
Q11 = "model.layers.11.self_attn.q_proj"
OUT, IN = 6, 5


def base_config(**overrides: Any) -> dict[str, Any]:
    """The fields PEFT writes that matter here; the rest default as in PEFT."""
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": "tiny-base",
        "task_type": "CAUSAL_LM",
        "target_modules": ["q_proj"],
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "lora_dropout": 0.0,
    }
    config.update(overrides)
    return config


def lora_tensors(ranks: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """PEFT-named random factors for each module at the given rank, float32."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, r in ranks.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(r, IN, generator=g)  # (r, in)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(OUT, r, generator=g)  # (out, r)
    return tensors


def make_folder(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    save_file(tensors, str(path / WEIGHTS_NAME))
    return path


def dense(tensors: dict[str, torch.Tensor], module: str, scaling: float) -> torch.Tensor:
    """Float64 reference update s · B @ A from the raw tensors: (out, r) @ (r, in) -> (out, in)."""
    A = tensors[f"{PREFIX}{module}.lora_A.weight"].double()
    B = tensors[f"{PREFIX}{module}.lora_B.weight"].double()
    return scaling * (B @ A)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[FlexLoraError], *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# --- pattern matching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "module", "expected"),
    [
        (["q_proj"], Q1, "q_proj"),
        (["layers.1.self_attn.q_proj"], Q1, "layers.1.self_attn.q_proj"),
        (["layers.1.self_attn.q_proj"], Q11, None),  # layers.1 is not layers.11
        (["1.self_attn.q_proj"], Q11, None),  # a key matches whole dot-separated parts only
        (["proj"], Q1, None),  # ... so a bare suffix of a part does not match
        ([Q1], Q1, Q1),  # the full name matches itself
        (["^self_attn.q_proj"], Q1, None),  # ^ anchors at the start of the name
        (["^model.layers.1.self_attn.q_proj"], Q1, "^model.layers.1.self_attn.q_proj"),
        (["v_proj", "layers\\.1\\..*q_proj", "q_proj"], Q1, "layers\\.1\\..*q_proj"),  # first wins
        (["q_proj|v_proj"], Q1, "q_proj|v_proj"),  # keys are regular expressions
        ([], Q1, None),
    ],
)
def test_match_pattern_key_follows_peft(keys: list[str], module: str, expected: str | None) -> None:
    assert match_pattern_key(keys, module) == expected
    # PEFT's own rule returns the module name itself when no key matches.
    assert get_pattern_key(keys, module) == (expected if expected is not None else module)


def test_exact_pattern_key_matches_one_module_only() -> None:
    # Prepare: every attention projection of a 12-layer model, nested names included.
    modules = [
        f"model.layers.{i}.self_attn.{p}_proj" for i in range(12) for p in ("q", "k", "v", "o")
    ] + ["model.layers.1.self_attn.q_proj.inner", "x.model.layers.1.self_attn.q_proj"]
    for module in modules:
        key = exact_pattern_key(module)
        # Execute / Assert: ours and PEFT's matcher hit exactly this module.
        assert [m for m in modules if match_pattern_key([key], m)] == [module]
        assert [m for m in modules if get_pattern_key([key], m) == key] == [module]


def test_module_rank_and_alpha_honours_patterns() -> None:
    config = base_config(
        r=4,
        lora_alpha=8,
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"^model.layers.11": 3},
    )
    assert module_rank_and_alpha(config, Q0) == (4, 8.0)
    assert module_rank_and_alpha(config, Q1) == (2, 8.0)
    # "^model.layers.11" must match the whole name: it is not a prefix match.
    assert module_rank_and_alpha(config, Q11) == (4, 8.0)
    config["alpha_pattern"] = {"^model.layers.11.self_attn.q_proj": 3}
    assert module_rank_and_alpha(config, Q11) == (4, 3.0)


# --- reading ----------------------------------------------------------------------------


def test_read_adapter_scalings_with_patterns(tmp_path: Path) -> None:
    # Prepare: r=4 alpha=8 by default, layers.1 at rank 2, layers.11 at alpha 3.
    config = base_config(
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"layers.11.self_attn.q_proj": 3},
    )
    tensors = lora_tensors({Q0: 4, Q1: 2, Q11: 4})
    folder = make_folder(tmp_path / "a", config, tensors)

    # Execute
    adapter = read_adapter(folder)

    # Assert
    assert adapter.folder == folder
    assert adapter.config == config
    assert adapter.ranks == {Q0: 4, Q1: 2, Q11: 4}
    assert adapter.alphas == {Q0: 8.0, Q1: 8.0, Q11: 3.0}
    assert adapter.factors[Q0].scaling == 8 / 4
    assert adapter.factors[Q1].scaling == 8 / 2
    assert adapter.factors[Q11].scaling == 3 / 4
    assert adapter.tensor_names[Q1] == (
        f"{PREFIX}{Q1}.lora_A.weight",
        f"{PREFIX}{Q1}.lora_B.weight",
    )
    for module, s in ((Q0, 2.0), (Q1, 4.0), (Q11, 0.75)):
        # float32 tensors as read, scaled in float64: exactly the reference.
        torch.testing.assert_close(
            adapter.factors[module].to(dtype=torch.float64).delta(), dense(tensors, module, s)
        )


def test_read_adapter_rslora(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path / "a", base_config(r=4, lora_alpha=8, use_rslora=True), lora_tensors({Q0: 4})
    )
    adapter = read_adapter(folder)
    assert adapter.use_rslora
    assert adapter.factors[Q0].scaling == 8 / math.sqrt(4)


def test_read_adapter_without_peft_prefix_keeps_names(tmp_path: Path) -> None:
    tensors = {k.removeprefix(PREFIX): v for k, v in lora_tensors({Q0: 4}).items()}
    adapter = read_adapter(make_folder(tmp_path / "a", base_config(), tensors))
    assert adapter.tensor_names[Q0] == (f"{Q0}.lora_A.weight", f"{Q0}.lora_B.weight")


# --- writing ----------------------------------------------------------------------------


def test_round_trip_keeps_names_values_and_scalings(tmp_path: Path) -> None:
    # Prepare: mixed ranks and alphas through patterns, rsLoRA on.
    config = base_config(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"layers.11.self_attn.q_proj": 5},
    )
    tensors = lora_tensors({Q0: 4, Q1: 2, Q11: 4}, seed=1)
    source = read_adapter(make_folder(tmp_path / "in", config, tensors))

    # Execute
    write_adapter(tmp_path / "out", source.factors, source.config, names_from=source)
    again = read_adapter(tmp_path / "out")

    # Assert: same names, same values, same scalings, the same rank and alpha per module.
    written_tensors = load_file(str(tmp_path / "out" / WEIGHTS_NAME))
    assert set(written_tensors) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(written_tensors[name], t)
    expected_scaling = {Q0: 8 / 2, Q1: 8 / math.sqrt(2), Q11: 5 / 2}
    for module, s in expected_scaling.items():
        assert again.factors[module].scaling == s
    written = again.config
    assert written["r"] == 4 and written["lora_alpha"] == 8 and written["use_rslora"] is True
    assert written["rank_pattern"] == {exact_pattern_key(Q1): 2}
    assert written["alpha_pattern"] == {exact_pattern_key(Q11): 5}
    for key in ("base_model_name_or_path", "task_type", "target_modules", "lora_dropout"):
        assert written[key] == config[key]
    assert again.ranks == {Q0: 4, Q1: 2, Q11: 4}
    assert again.alphas == source.alphas


@pytest.mark.parametrize("use_rslora", [False, True])
def test_write_adapter_folds_scalings_the_config_cannot_give(
    tmp_path: Path, use_rslora: bool
) -> None:
    # Prepare: the template gives alpha 8; Q0's scaling 0.3 is not 8 / r (nor 8 / sqrt(r)),
    # while Q1's is exactly what the template gives at rank 2.
    g = torch.Generator().manual_seed(4)
    q1_scaling = 8 / math.sqrt(2) if use_rslora else 8 / 2
    factors = {
        Q0: LoraFactors(
            B=torch.randn(OUT, 3, generator=g), A=torch.randn(3, IN, generator=g), scaling=0.3
        ),
        Q1: LoraFactors(
            B=torch.randn(OUT, 2, generator=g),
            A=torch.randn(2, IN, generator=g),
            scaling=q1_scaling,
        ),
    }

    # Execute
    write_adapter(tmp_path / "out", factors, base_config(use_rslora=use_rslora))
    again = read_adapter(tmp_path / "out")

    # Assert: Q0 folded (PEFT scaling exactly 1), Q1 kept; the updates are unchanged.
    assert again.factors[Q0].scaling == 1.0
    assert again.factors[Q1].scaling == q1_scaling
    assert again.alphas[Q0] == (math.sqrt(3) if use_rslora else 3.0)
    assert again.config["use_rslora"] is use_rslora
    for module, f in factors.items():
        torch.testing.assert_close(
            again.factors[module].to(dtype=torch.float64).delta(),
            f.to(dtype=torch.float64).delta(),
            rtol=1e-6,
            atol=1e-6,
        )


def test_write_adapter_layers_1_and_11_get_their_own_ranks(tmp_path: Path) -> None:
    # Prepare: the most common rank is 4; layers 1 and 11 differ from it and from each other.
    g = torch.Generator().manual_seed(2)
    q2 = "model.layers.2.self_attn.q_proj"
    ranks = {Q0: 4, q2: 4, Q1: 3, Q11: 5}
    factors = {
        m: LoraFactors(
            B=torch.randn(OUT, r, generator=g), A=torch.randn(r, IN, generator=g), scaling=0.5
        )
        for m, r in ranks.items()
    }

    # Execute
    write_adapter(tmp_path / "out", factors, base_config())
    again = read_adapter(tmp_path / "out")

    # Assert: the rank check on reading passes, so every module got its own rank.
    assert again.ranks == ranks
    assert again.config["r"] == 4
    assert set(again.config["rank_pattern"]) == {exact_pattern_key(Q1), exact_pattern_key(Q11)}
    assert set(load_file(str(tmp_path / "out" / WEIGHTS_NAME))) == {
        f"{PREFIX}{m}.lora_{s}.weight" for m in ranks for s in "AB"
    }
    for module, f in factors.items():
        torch.testing.assert_close(again.factors[module].delta().double(), f.delta().double())


def test_write_adapter_most_common_rank_tie_takes_smallest(tmp_path: Path) -> None:
    factors = {
        Q0: LoraFactors(B=torch.ones(OUT, 3), A=torch.ones(3, IN), scaling=1.0),
        Q1: LoraFactors(B=torch.ones(OUT, 2), A=torch.ones(2, IN), scaling=1.0),
    }
    write_adapter(tmp_path / "out", factors, base_config())
    config = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert config["r"] == 2
    assert config["rank_pattern"] == {exact_pattern_key(Q0): 3}


def test_write_global_adapter_zero_rank_gets_one_zero_component(tmp_path: Path) -> None:
    # Prepare: one real update of rank 3 and one all-zero update of rank 0.
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(OUT, 3, generator=g, dtype=torch.float64), torch.randn(3, IN, generator=g)
    update = {
        Q0: GlobalUpdate(B=B, A=A.double()),
        Q1: GlobalUpdate(B=torch.zeros(OUT, 0), A=torch.zeros(0, IN)),
    }

    # Execute
    write_global_adapter(tmp_path / "g", update, base_config(use_rslora=True, lora_alpha=99))
    again = read_adapter(tmp_path / "g")

    # Assert
    assert again.ranks == {Q0: 3, Q1: 1}
    assert again.factors[Q0].scaling == 1.0 and again.factors[Q1].scaling == 1.0
    torch.testing.assert_close(again.factors[Q0].delta().double(), B @ A.double())
    assert torch.count_nonzero(again.factors[Q1].delta()) == 0


def test_write_adapter_dtype(tmp_path: Path) -> None:
    factors = {
        Q0: LoraFactors(B=torch.ones(OUT, 2, dtype=torch.float64), A=torch.ones(2, IN), scaling=0.5)
    }
    write_adapter(tmp_path / "out", factors, base_config(), dtype=torch.bfloat16)
    tensors = load_file(str(tmp_path / "out" / WEIGHTS_NAME))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert tensors[f"{PREFIX}{Q0}.lora_B.weight"].float().unique().tolist() == [0.5]


def test_write_adapter_refuses_non_empty_folder_and_leaves_it(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    factors = {Q0: LoraFactors(B=torch.ones(OUT, 2), A=torch.ones(2, IN), scaling=1.0)}
    with pytest.raises(FlexLoraError) as excinfo:
        write_adapter(tmp_path / "out", factors, base_config())
    assert_one_line_error(excinfo, str(tmp_path / "out"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_write_adapter_error_leaves_nothing(tmp_path: Path) -> None:
    bad = torch.ones(OUT, 2)
    bad[0, 0] = float("nan")
    factors = {
        Q0: LoraFactors(B=torch.ones(OUT, 2), A=torch.ones(2, IN), scaling=1.0),
        Q1: LoraFactors(B=bad, A=torch.ones(2, IN), scaling=1.0),
    }
    with pytest.raises(FlexLoraError) as excinfo:
        write_adapter(tmp_path / "out", factors, base_config())
    assert_one_line_error(excinfo, "out", Q1, "NaN")
    assert list(tmp_path.iterdir()) == []


def test_write_adapter_names_from_must_know_every_module(tmp_path: Path) -> None:
    source = read_adapter(make_folder(tmp_path / "in", base_config(), lora_tensors({Q0: 4})))
    factors = {Q1: LoraFactors(B=torch.ones(OUT, 4), A=torch.ones(4, IN), scaling=1.0)}
    with pytest.raises(FlexLoraError) as excinfo:
        write_adapter(tmp_path / "out", factors, source.config, names_from=source)
    assert_one_line_error(excinfo, Q1)
    assert not (tmp_path / "out").exists()


# --- bad input --------------------------------------------------------------------------


def test_read_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(tmp_path / "nope")
    assert_one_line_error(excinfo, str(tmp_path / "nope"), "not found")


def test_read_missing_config(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(), lora_tensors({Q0: 4}))
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), CONFIG_NAME)


def test_read_missing_weights_mentions_bin(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(), lora_tensors({Q0: 4}))
    (folder / WEIGHTS_NAME).rename(folder / "adapter_model.bin")
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), WEIGHTS_NAME, "adapter_model.bin")


def test_read_invalid_json(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(), lora_tensors({Q0: 4}))
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, CONFIG_NAME, "JSON")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"peft_type": "IA3"}, "not a LoRA adapter"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"bias": "lora_only"}, "bias"),
        ({"lora_bias": True}, "bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_qalora": True}, "QALoRA"),
        ({"init_lora_weights": "pissa_niter_4"}, "changes the base weights"),
        ({"init_lora_weights": "olora"}, "changes the base weights"),
    ],
)
def test_read_refuses_unsupported_config(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    folder = make_folder(tmp_path / "a", base_config(**overrides), lora_tensors({Q0: 4}))
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), expected)


@pytest.mark.parametrize(
    ("extra_name", "expected"),
    [
        (f"{PREFIX}{Q0}.lora_magnitude_vector", "DoRA"),
        (f"{PREFIX}model.embed_tokens.lora_embedding_A", "embedding LoRA"),
        (f"{PREFIX}lm_head.modules_to_save.default.weight", "modules_to_save"),
        (f"{PREFIX}{Q0}.lora_B.bias", "bias"),
        (f"{PREFIX}{Q0}.weight", "not a LoRA factor"),
    ],
)
def test_read_refuses_unsupported_tensors(tmp_path: Path, extra_name: str, expected: str) -> None:
    tensors = lora_tensors({Q0: 4})
    tensors[extra_name] = torch.zeros(4, IN)
    folder = make_folder(tmp_path / "a", base_config(), tensors)
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), extra_name, expected)


@pytest.mark.parametrize("present", ["A", "B"])
def test_read_unpaired_factor(tmp_path: Path, present: str) -> None:
    tensors = lora_tensors({Q0: 4, Q1: 4})
    missing = "B" if present == "A" else "A"
    del tensors[f"{PREFIX}{Q1}.lora_{missing}.weight"]
    folder = make_folder(tmp_path / "a", base_config(), tensors)
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q1, f"has lora_{present} but no lora_{missing}")


def test_read_rank_disagrees_with_r(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(r=8), lora_tensors({Q0: 4}))
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q0, "rank 4", "r=8")


def test_read_rank_disagrees_with_rank_pattern(tmp_path: Path) -> None:
    # rank_pattern names layers.1, but the tensors of layers.11 have rank 2 instead.
    config = base_config(rank_pattern={"layers.1.self_attn.q_proj": 2})
    folder = make_folder(tmp_path / "a", config, lora_tensors({Q1: 2, Q11: 2}))
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q11, "rank 2", "r=4")


def test_read_a_and_b_disagree(tmp_path: Path) -> None:
    tensors = lora_tensors({Q0: 4})
    tensors[f"{PREFIX}{Q0}.lora_B.weight"] = torch.zeros(OUT, 3)
    folder = make_folder(tmp_path / "a", base_config(), tensors)
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q0, "disagree on the rank")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("side", ["A", "B"])
def test_read_non_finite(tmp_path: Path, value: float, side: str) -> None:
    tensors = lora_tensors({Q0: 4, Q1: 4})
    tensors[f"{PREFIX}{Q1}.lora_{side}.weight"][1, 1] = value
    folder = make_folder(tmp_path / "a", base_config(), tensors)
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q1, f"lora_{side}", "NaN or Inf")


def test_read_non_2d(tmp_path: Path) -> None:
    tensors = lora_tensors({Q0: 4})
    tensors[f"{PREFIX}{Q0}.lora_A.weight"] = torch.zeros(4, IN, 1, 1)  # a conv LoRA
    folder = make_folder(tmp_path / "a", base_config(), tensors)
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q0, "4-D", "2-D")


def test_read_no_lora_tensors(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(), {})
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), "no LoRA tensors")


def test_read_bad_rank_in_config(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", base_config(r=0), lora_tensors({Q0: 4}))
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), Q0, "positive int")


def test_read_bad_pattern_regex(tmp_path: Path) -> None:
    config = base_config(rank_pattern={"q_proj[": 2})
    folder = make_folder(tmp_path / "a", config, lora_tensors({Q0: 4}))
    with pytest.raises(FlexLoraError) as excinfo:
        read_adapter(folder)
    assert_one_line_error(excinfo, str(folder), "q_proj[", "regular expression")
