"""`flexlora aggregate` end to end on real PEFT adapters of a tiny Llama.

Three adapters of ranks 2, 4 and 8 (one with rsLoRA, one with rank_pattern, one with
alpha_pattern) are made with peft on a 2-layer Llama. The command's outputs are loaded
back with `PeftModel.from_pretrained`, and their logits must equal the base model with
the expected dense update patched in by hand, computed in float64 from the inputs.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from flexlora.cli import main

PREFIX = "base_model.model."
TARGETS = ["q_proj", "v_proj", "down_proj"]
V1 = "model.layers.1.self_attn.v_proj"


@dataclass(frozen=True)
class Spec:
    """One input adapter, with its scaling rule written out independently of flexlora."""

    r: int
    alpha: float
    rslora: bool = False
    rank_pattern: Mapping[str, int] | None = None
    alpha_pattern: Mapping[str, float] | None = None
    rank_of: Callable[[str], int] | None = None
    alpha_of: Callable[[str], float] | None = None

    def scaling(self, module: str) -> float:
        r = self.rank_of(module) if self.rank_of else self.r
        alpha = self.alpha_of(module) if self.alpha_of else self.alpha
        return alpha / math.sqrt(r) if self.rslora else alpha / r


SPECS = [
    Spec(
        r=2,
        alpha=4,
        alpha_pattern={"down_proj": 6},
        alpha_of=lambda m: 6 if m.endswith("down_proj") else 4,
    ),
    Spec(r=4, alpha=16, rslora=True),
    Spec(
        r=8,
        alpha=8,
        rank_pattern={"layers.1.self_attn.v_proj": 3},
        rank_of=lambda m: 3 if m == V1 else 8,
    ),
]


def tiny_llama(hidden: int = 32) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        vocab_size=100,
    )
    return LlamaForCausalLM(config)


def make_adapter(base_dir: Path, spec: Spec, out: Path, seed: int) -> None:
    """A PEFT adapter on the saved base with its lora_B randomised (PEFT inits B to zero)."""
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        use_rslora=spec.rslora,
        target_modules=TARGETS,
        rank_pattern=dict(spec.rank_pattern or {}),
        alpha_pattern=dict(spec.alpha_pattern or {}),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    model.save_pretrained(out)


@dataclass(frozen=True)
class World:
    base_dir: Path
    adapters: list[Path]
    other_model_adapter: Path  # the same modules on a model of another size
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("aggregate")
    torch.manual_seed(0)  # model initialisation only; tests may seed globally
    tiny_llama().save_pretrained(root / "base")
    tiny_llama(hidden=48).save_pretrained(root / "base48")
    adapters = []
    for i, spec in enumerate(SPECS):
        make_adapter(root / "base", spec, root / f"adapter-{i}", seed=100 + i)
        adapters.append(root / f"adapter-{i}")
    make_adapter(root / "base48", SPECS[1], root / "adapter-48", seed=200)
    return World(root / "base", adapters, root / "adapter-48", root)


def raw_factors(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (B, A) in float64, read with safetensors directly."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for name, A in tensors.items():
        if name.endswith(".lora_A.weight"):
            module = name.removeprefix(PREFIX).removesuffix(".lora_A.weight")
            B = tensors[name.replace(".lora_A.", ".lora_B.")]
            out[module] = (B.double(), A.double())
    return out


def reference_update(world: World, weights: list[float]) -> dict[str, torch.Tensor]:
    """dW = Σ p_k s_k B_k A_k per module, float64: (out, r_k) @ (r_k, in) -> (out, in)."""
    p = [w / sum(weights) for w in weights]
    inputs = [raw_factors(folder) for folder in world.adapters]
    return {
        module: sum(
            (
                p[k] * SPECS[k].scaling(module) * (f[module][0] @ f[module][1])
                for k, f in enumerate(inputs)
            ),
            start=torch.zeros(()),
        )
        for module in inputs[0]
    }


def truncate(dW: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of dW (Eckart–Young), float64."""
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    k = min(rank, S.numel())
    return (U[:, :k] * S[:k]) @ Vh[:k]  # (out, k) @ (k, in) -> (out, in)


def discarded(dW: torch.Tensor, rank: int) -> float:
    S = torch.linalg.svdvals(dW)
    return float(1 - (S[:rank] ** 2).sum() / (S**2).sum())


INPUT_IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 8, 64], [7, 7, 0, 13, 21, 34, 55, 89]])


def peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir)
    with torch.no_grad():
        return model.eval()(INPUT_IDS).logits.double()


def patched_logits(base_dir: Path, deltas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the base model in float64 with W0 + delta patched into each module."""
    model = LlamaForCausalLM.from_pretrained(base_dir).double().eval()
    with torch.no_grad():
        for module, delta in deltas.items():
            model.get_submodule(module).weight += delta
        return model(INPUT_IDS).logits


def assert_logits_match(actual: torch.Tensor, expected: torch.Tensor, base: torch.Tensor) -> None:
    # The update must move the logits well beyond the tolerance, or the check proves nothing.
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def run(argv: list[str]) -> int:
    return main(["aggregate", *argv])


@pytest.fixture(scope="module")
def flexlora_out(world: World) -> Path:
    out = world.root / "out-flexlora"
    argv = [
        *map(str, world.adapters),
        "--out",
        str(out),
        "--weights",
        "1,2,3",
        "--dtype",
        "float64",
    ]
    assert run(argv) == 0
    return out


def test_clients_and_global_forward_match_dense_reference(world: World, flexlora_out: Path) -> None:
    # Prepare
    dW = reference_update(world, [1, 2, 3])
    base = patched_logits(world.base_dir, {})

    # Assert: each client carries the best approximation of dW at its own per-module rank.
    for i, spec in enumerate(SPECS):
        ranks = {m: spec.rank_of(m) if spec.rank_of else spec.r for m in dW}
        expected = patched_logits(world.base_dir, {m: truncate(d, ranks[m]) for m, d in dW.items()})
        assert_logits_match(
            peft_logits(world.base_dir, flexlora_out / f"client-{i}"), expected, base
        )
        written = raw_factors(flexlora_out / f"client-{i}")
        assert {m: B.shape[1] for m, (B, _) in written.items()} == ranks

    # Assert: the global adapter is dW itself, exactly.
    expected = patched_logits(world.base_dir, dW)
    assert_logits_match(peft_logits(world.base_dir, flexlora_out / "global"), expected, base)
    global_ranks = {m: B.shape[1] for m, (B, _) in raw_factors(flexlora_out / "global").items()}
    assert global_ranks == {m: int(torch.linalg.matrix_rank(d)) for m, d in dW.items()}


def test_outputs_keep_input_tensor_names(world: World, flexlora_out: Path) -> None:
    names = [set(load_file(str(a / "adapter_model.safetensors"))) for a in world.adapters]
    for i in range(len(SPECS)):
        assert (
            set(load_file(str(flexlora_out / f"client-{i}" / "adapter_model.safetensors")))
            == names[i]
        )
    assert set(load_file(str(flexlora_out / "global" / "adapter_model.safetensors"))) == names[0]
    # The config keeps the input's base model and targets.
    config = json.loads((flexlora_out / "client-1" / "adapter_config.json").read_text())
    source = json.loads((world.adapters[1] / "adapter_config.json").read_text())
    for key in ("base_model_name_or_path", "target_modules", "task_type", "peft_type"):
        assert config[key] == source[key]
    # The client keeps its own scaling: rsLoRA, alpha 16, rank 4, factors unfolded.
    assert config["use_rslora"] is True and config["lora_alpha"] == 16 and config["r"] == 4
    # The global update has its scaling folded in: alpha = r, no rsLoRA.
    config = json.loads((flexlora_out / "global" / "adapter_config.json").read_text())
    assert config["use_rslora"] is False and config["lora_alpha"] == config["r"]
    assert config["alpha_pattern"] == {k: v for k, v in config["rank_pattern"].items()}


def test_summary(world: World, flexlora_out: Path) -> None:
    summary = json.loads((flexlora_out / "summary.json").read_text())
    dW = reference_update(world, [1, 2, 3])

    assert summary["method"] == "flexlora"
    assert summary["weights"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert [c["folder"] for c in summary["clients"]] == ["client-0", "client-1", "client-2"]
    assert [c["source"] for c in summary["clients"]] == [str(a) for a in world.adapters]
    assert summary["clients"][0]["ranks"] == 2
    assert summary["clients"][2]["ranks"] == {m: 3 if m == V1 else 8 for m in dW}
    assert summary["inputs"][1]["use_rslora"] is True
    assert summary["inputs"][0]["alpha"] == {m: 6 if m.endswith("down_proj") else 4 for m in dW}
    assert summary["clients_written"] is True
    for i, spec in enumerate(SPECS):
        client = summary["clients"][i]
        for module, d in dW.items():
            rank = spec.rank_of(module) if spec.rank_of else spec.r
            assert client["discarded_energy"][module] == pytest.approx(discarded(d, rank), abs=1e-6)
        energies = list(client["discarded_energy"].values())
        assert client["discarded_energy_mean"] == pytest.approx(sum(energies) / len(energies))
    assert (
        summary["clients"][0]["discarded_energy_mean"]
        > summary["clients"][2]["discarded_energy_mean"]
    )
    assert set(summary["timing_seconds"]) == {"read", "aggregate", "write", "total"}
    assert summary["global"]["folder"] == "global"


def test_ranks_option_resizes_every_client(world: World) -> None:
    # Prepare: rank 40 exceeds min(out, in) = 32 of every module: capped at 32, as `run`
    # caps a rank type (zero-padding would only add components that hold nothing).
    out = world.root / "out-ranks"
    dW = reference_update(world, [1, 1, 1])
    base = patched_logits(world.base_dir, {})

    # Execute
    assert run([*map(str, world.adapters), "--out", str(out), "--ranks", "1,3,40"]) == 0

    # Assert
    summary = json.loads((out / "summary.json").read_text())
    assert [c["ranks"] for c in summary["clients"]] == [1, 3, 32]
    for i, rank in enumerate([1, 3, 32]):
        config = json.loads((out / f"client-{i}" / "adapter_config.json").read_text())
        assert config["r"] == rank and config["rank_pattern"] == {}
        assert (
            config["lora_alpha"] == SPECS[i].alpha
        )  # the input's alpha, re-applied at the new rank
        expected = patched_logits(world.base_dir, {m: truncate(d, rank) for m, d in dW.items()})
        assert_logits_match(peft_logits(world.base_dir, out / f"client-{i}"), expected, base)


def test_force_replaces_existing_output(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    out = world.root / "out-force"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = [*map(str, world.adapters), "--out", str(out)]

    assert run(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    assert run([*argv, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "client-0",
        "client-1",
        "client-2",
        "global",
        "summary.json",
    ]


def test_method_without_client_factors_writes_global_only(world: World) -> None:
    out = world.root / "out-flora"

    assert run([*map(str, world.adapters), "--out", str(out), "--method", "flora"]) == 0

    assert sorted(p.name for p in out.iterdir()) == ["global", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_written"] is False and "flora" in summary["note"]
    base = patched_logits(world.base_dir, {})
    expected = patched_logits(world.base_dir, reference_update(world, [1, 1, 1]))
    assert_logits_match(peft_logits(world.base_dir, out / "global"), expected, base)


def threshold_rank(dW: torch.Tensor, energy: float) -> int:
    """The smallest r whose leading singular values hold `energy` of ‖dW‖², by a plain loop."""
    squares = [float(s) ** 2 for s in torch.linalg.svdvals(dW)]
    running = 0.0
    for r, sq in enumerate(squares, start=1):
        running += sq
        if running >= energy * sum(squares):
            return r
    raise AssertionError("threshold never reached")


def test_florist_truncates_the_global_model_at_the_threshold_rank(world: World) -> None:
    # Prepare
    out = world.root / "out-florist"
    dW = reference_update(world, [1, 2, 3])
    r_star = {m: threshold_rank(d, 0.8) for m, d in dW.items()}
    assert any(1 < r < 8 for r in r_star.values())  # the threshold cuts somewhere real
    base = patched_logits(world.base_dir, {})
    argv = ["--weights", "1,2,3", "--dtype", "float64", "--method", "florist"]

    # Execute
    assert run([*map(str, world.adapters), "--out", str(out), *argv, "--option", "energy=0.8"]) == 0

    # Assert: global/ is T_{r*}(dW), each client the truncation at min(its rank, r*).
    expected = patched_logits(world.base_dir, {m: truncate(d, r_star[m]) for m, d in dW.items()})
    assert_logits_match(peft_logits(world.base_dir, out / "global"), expected, base)
    for i, spec in enumerate(SPECS):
        ranks = {m: spec.rank_of(m) if spec.rank_of else spec.r for m in dW}
        kept = {m: min(ranks[m], r_star[m]) for m in dW}
        expected = patched_logits(world.base_dir, {m: truncate(d, kept[m]) for m, d in dW.items()})
        assert_logits_match(peft_logits(world.base_dir, out / f"client-{i}"), expected, base)
        written = raw_factors(out / f"client-{i}")
        assert {m: B.shape[1] for m, (B, _) in written.items()} == ranks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"] == {"dtype": "float64", "energy": 0.8}
    assert summary["diagnostics"]["global_rank"] == r_star
    for module, d in dW.items():
        assert summary["diagnostics"]["global_discarded_energy"][module] == pytest.approx(
            discarded(d, r_star[module]), abs=1e-9
        )


EQUAL_SPECS = [
    Spec(r=4, alpha=8),
    Spec(r=4, alpha=16, rslora=True),
    Spec(
        r=4,
        alpha=4,
        alpha_pattern={"down_proj": 12},
        alpha_of=lambda m: 12 if m.endswith("down_proj") else 4,
    ),
]


def test_fedex_global_is_exact_and_clients_are_the_averages(world: World) -> None:
    # Prepare: one rank, three different scalings
    folders = []
    for i, spec in enumerate(EQUAL_SPECS):
        make_adapter(world.base_dir, spec, world.root / f"equal-{i}", seed=300 + i)
        folders.append(world.root / f"equal-{i}")
    out = world.root / "out-fedex"
    p = [1 / 6, 2 / 6, 3 / 6]
    inputs = [raw_factors(folder) for folder in folders]
    dW, averaged = {}, {}
    for module in inputs[0]:
        scaled = [EQUAL_SPECS[k].scaling(module) for k in range(3)]
        dW[module] = sum(
            p[k] * scaled[k] * (f[module][0] @ f[module][1]) for k, f in enumerate(inputs)
        )
        B_avg = sum(p[k] * scaled[k] * f[module][0] for k, f in enumerate(inputs))
        A_avg = sum(p[k] * f[module][1] for k, f in enumerate(inputs))
        averaged[module] = B_avg @ A_avg  # (out, 4) @ (4, in) -> (out, in)
    base = patched_logits(world.base_dir, {})

    # Execute
    argv = ["--weights", "1,2,3", "--dtype", "float64", "--method", "fedex"]
    assert run([*map(str, folders), "--out", str(out), *argv]) == 0

    # Assert: global/ carries dW exactly, residual included.
    expected = patched_logits(world.base_dir, dW)
    assert_logits_match(peft_logits(world.base_dir, out / "global"), expected, base)
    # A client adapter alone, on the original base, is W0 + B̄Ā: the residual lives in the
    # base, which an adapter folder cannot carry; summary.json says so.
    averaged_logits = patched_logits(world.base_dir, averaged)
    assert (averaged_logits - expected).abs().max() > 1e-3  # the residual matters here
    for i in range(3):
        assert_logits_match(peft_logits(world.base_dir, out / f"client-{i}"), averaged_logits, base)
    summary = json.loads((out / "summary.json").read_text())
    diagnostics = summary["diagnostics"]
    assert "base_update" in diagnostics["note"] and "W0 + mean(sB)·mean(A)" in diagnostics["note"]
    for module, d in dW.items():
        residual = float(
            torch.linalg.matrix_norm(d - averaged[module]) / torch.linalg.matrix_norm(d)
        )
        assert diagnostics["residual_relative_norm"][module] == pytest.approx(residual, rel=1e-6)


# --- bad input: one stderr line naming the culprit, exit 2, no OUT ----------------------


def copy_adapter(
    src: Path, dst: Path, edit: Callable[[dict, dict[str, torch.Tensor]], None]
) -> Path:
    """A copy of `src` with its config and tensors edited in place by `edit`."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    edit(config, tensors)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


def set_nan(config: dict, tensors: dict[str, torch.Tensor]) -> None:
    tensors[f"{PREFIX}{V1}.lora_B.weight"][0, 0] = float("nan")


def set_r3(config: dict, tensors: dict[str, torch.Tensor]) -> None:
    config["r"] = 3


def drop_v1(config: dict, tensors: dict[str, torch.Tensor]) -> None:
    del tensors[f"{PREFIX}{V1}.lora_A.weight"], tensors[f"{PREFIX}{V1}.lora_B.weight"]


def assert_failed(capsys: pytest.CaptureFixture[str], rc: int, out: Path, *parts: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1, lines
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        (set_nan, ["adapter-bad", V1, "NaN"]),
        (set_r3, ["adapter-bad", "model.layers.0.mlp.down_proj", "r=3"]),
        (drop_v1, ["adapter-bad", V1, "missing"]),
    ],
    ids=["nan", "rank-vs-config", "module-missing"],
)
def test_bad_adapter(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict, dict[str, torch.Tensor]], None],
    parts: list[str],
) -> None:
    bad = copy_adapter(world.adapters[1], tmp_path / "adapter-bad", edit)
    out = tmp_path / "out"
    rc = run([str(world.adapters[0]), str(bad), "--out", str(out)])
    assert_failed(capsys, rc, out, *parts)


def test_adapter_of_another_model_size(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = run([str(world.adapters[0]), str(world.other_model_adapter), "--out", str(out)])
    assert_failed(
        capsys, rc, out, str(world.other_model_adapter), "model.layers.0.mlp.down_proj", "48x64"
    )


@pytest.mark.parametrize(
    ("option", "parts"),
    [
        (["--weights", "1,0,2"], ["--weights", "value 1", "positive"]),
        (["--weights", "1,-2,2"], ["--weights", "value 1", "positive"]),
        (["--weights", "1,2"], ["--weights", "2 values for 3 adapters"]),
        (["--weights", "1,x,2"], ["--weights", "'x'", "not a number"]),
        (["--weights", "1,nan,2"], ["--weights", "positive finite"]),
        (["--ranks", "1,0,2"], ["--ranks", "value 1", "positive int"]),
        (["--ranks", "2,2"], ["--ranks", "2 values for 3 adapters"]),
        (["--ranks", "2,2.5,2"], ["--ranks", "'2.5'"]),
        (["--method", "no-such-method"], ["no-such-method"]),
        (["--option", "novalue"], ["--option", "KEY=VALUE"]),
        (["--option", "no_such_option=1"], ["flexlora", "no_such_option"]),
        (["--method", "fedit", "--svd", "exact"], ["--svd", "fedit"]),
        (["--method", "fedit"], ["fedit", "adapter-2"]),  # mixed ranks: the method's error
        (["--method", "fedex"], ["fedex", "flexlora or zeropad", "adapter-2"]),
        (["--method", "florist", "--option", "energy=1.5"], ["florist", "energy", "(0, 1]"]),
        (["--method", "florist", "--svd", "exact"], ["--svd", "florist"]),
    ],
)
def test_bad_arguments(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
    parts: list[str],
) -> None:
    out = tmp_path / "out"
    rc = run([*map(str, world.adapters), "--out", str(out), *option])
    assert_failed(capsys, rc, out, *parts)


def test_the_same_folder_twice_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = str(world.adapters[0])
    again = str(world.adapters[0]) + "/."  # the same folder, spelt differently
    rc = run([first, str(world.adapters[1]), again, "--out", str(out)])
    assert_failed(capsys, rc, out, "given twice", "weighted twice")


def test_a_rank_above_the_module_is_capped_not_padded(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        rc = run([*map(str, world.adapters), "--out", str(out), "--ranks", "100000,2,2"])
    assert rc == 0
    assert "capped at min(out, in)" in caplog.text
    config = json.loads((out / "client-0" / "adapter_config.json").read_text())
    ranks = [config["r"], *config.get("rank_pattern", {}).values()]
    assert max(ranks) == 32  # min(out, in) of every target module of the hidden-32 model


def test_missing_adapter_folder(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = run([str(world.adapters[0]), str(tmp_path / "nowhere"), "--out", str(out)])
    assert_failed(capsys, rc, out, str(tmp_path / "nowhere"), "not found")


def test_no_inputs_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        run(["--out", str(out)])
    assert excinfo.value.code == 2
    assert "ADAPTER_DIR" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no CUDA device exists")
def test_cuda_without_a_device(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = run([*map(str, world.adapters), "--out", str(out), "--device", "cuda"])
    assert_failed(capsys, rc, out, "--device cuda", "no CUDA device")


def test_options_reach_the_method(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        *map(str, world.adapters),
        "--out",
        str(out),
        "--svd",
        "exact",
        "--option",
        "split=sqrt",
    ]
    assert run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"] == {"dtype": "float32", "svd": "exact", "split": "sqrt"}
    # A √Σ split changes the factors, not the client's update.
    dW = reference_update(world, [1, 1, 1])
    base = patched_logits(world.base_dir, {})
    expected = patched_logits(world.base_dir, {m: truncate(d, 2) for m, d in dW.items()})
    assert_logits_match(peft_logits(world.base_dir, out / "client-0"), expected, base)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(world: World, tmp_path: Path) -> None:
    common = [*map(str, world.adapters), "--weights", "1,2,3", "--dtype", "float64"]
    assert run([*common, "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    assert run([*common, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 0
    for folder in ("client-0", "client-1", "client-2", "global"):
        cpu = raw_factors(tmp_path / "cpu" / folder)
        gpu = raw_factors(tmp_path / "gpu" / folder)
        for module, (B, A) in cpu.items():
            torch.testing.assert_close(gpu[module][0] @ gpu[module][1], B @ A, rtol=1e-5, atol=1e-6)
