"""Config validation: every bad value is one FlexLoraError naming the key, up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexlora.assets import resolve_model_path
from flexlora.config import config_from_dict, load_config
from flexlora.errors import FlexLoraError
from flexlora.ranks import resolve_rank_type


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.max_grad_norm=-1", "federation.max_grad_norm must be positive"),
        ("federation.max_grad_norm=0", "federation.max_grad_norm must be positive"),
        ("federation.lr=.nan", "federation.lr"),
        ("federation.lr=.inf", "federation.lr"),
        ("federation.lr=0", "federation.lr must be positive"),
        ("federation.lr=-1e-3", "federation.lr must be positive"),
        ("federation.sgd_lr=0", "federation.sgd_lr must be positive"),
        ("federation.sgd_lr=.inf", "federation.sgd_lr"),
        ("federation.weight_decay=-0.1", "federation.weight_decay must be >= 0"),
        ("federation.weight_decay=.inf", "federation.weight_decay"),
        ("federation.local_epochs=.nan", "federation.local_epochs"),
        ("seed=-1", "seed must be >= 0"),
        ("lora.alpha=.nan", "lora.alpha"),
        ("lora.alpha=.inf", "lora.alpha"),
        ("lora.alpha=0", "lora.alpha must be positive"),
        ("data.dirichlet_alpha=.nan", "data.dirichlet_alpha"),
        ("ranks.distribution=[0.5, .nan, 0.5, 0]", "ranks.distribution"),
        ("ranks.distribution=[1.5, -0.5, 0, 0]", "ranks.distribution"),
        ("model.device=foo", "model.device"),
        ("model.device=cuda:x", "model.device"),
        ("federation.lr=nan", "federation.lr is not a finite number"),
    ],
)
def test_bad_value_is_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(FlexLoraError, match=message.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_known_devices_are_accepted(device: str) -> None:
    assert load_config(None, [f"model.device={device}"]).model.device == device


@pytest.mark.parametrize(("text", "value"), [("3e-4", 3e-4), ("1E+2", 100.0), ("2", 2.0)])
def test_exponent_without_a_dot_is_a_number(text: str, value: float) -> None:
    # YAML 1.1 reads 3e-4 (no dot) as the string "3e-4"
    assert load_config(None, [f"federation.lr={text}"]).federation.lr == value


def test_exponent_in_a_file_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("federation:\n  lr: 3e-4\n  max_grad_norm: 1e0\n")
    cfg = load_config(path)
    assert cfg.federation.lr == 3e-4 and cfg.federation.max_grad_norm == 1.0


def test_a_word_is_still_not_a_number() -> None:
    with pytest.raises(FlexLoraError, match=r"federation\.lr: expected a number"):
        load_config(None, ["federation.lr=fast"])


def test_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1 # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(FlexLoraError, match=r"latin1\.yaml") as e:
        load_config(path)
    assert "UTF-8" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("data:\n  kind: synthetic\nseed: 1\ndata:\n  max_length: 64\n", "data", 4),
        ("federation:\n  lr: 0.1\n  rounds: 2\n  lr: 0.2\n", "lr", 4),
    ],
)
def test_duplicate_keys_are_refused_with_key_and_line(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(FlexLoraError) as e:
        load_config(path)
    message = str(e.value)
    assert f"'{key}'" in message and f"line {line}" in message and "dup.yaml" in message
    assert "\n" not in message


def test_duplicate_key_in_a_set_value_is_refused() -> None:
    with pytest.raises(FlexLoraError, match="'num_clients'"):
        load_config(None, ["data.synthetic={num_clients: 4, num_clients: 8}"])


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    # an anchor's keys overridden under a merge (<<) are YAML's own override, not a mistake
    path.write_text("method_options: &b {rounds: 2, lr: 0.1}\nfederation:\n  <<: *b\n  lr: 0.2\n")
    assert load_config(path).federation.lr == 0.2


def test_unknown_key_in_a_rank_type_mapping_is_refused() -> None:
    with pytest.raises(FlexLoraError, match="'foo'"):
        load_config(None, ["ranks.types=[{attention: 8, mlp: 30, foo: 2}]"])


def test_module_names_in_a_rank_type_mapping_are_accepted() -> None:
    cfg = load_config(None, ["ranks.types=[{q_proj: 4, attention: 8, mlp: 2}]"])
    assert cfg.ranks.types == [{"q_proj": 4, "attention": 8, "mlp": 2}]


def test_resolve_rank_type_refuses_a_key_no_module_answers_to() -> None:
    shapes = {"layers.0.q_proj": (8, 8), "layers.0.up_proj": (16, 8)}
    with pytest.raises(FlexLoraError, match="'qproj'"):
        resolve_rank_type({"qproj": 2, "attention": 4, "mlp": 4}, shapes)


@pytest.mark.parametrize("path", ["./nope", "/tmp/flexlora-no-such-model", "../x/y", "~/nope-x"])
def test_missing_local_model_folder_says_so(path: str) -> None:
    with pytest.raises(FlexLoraError, match="model folder not found"):
        resolve_model_path(path)


def test_hub_ids_pass_through_unchanged() -> None:
    assert resolve_model_path("TinyLlama/TinyLlama-1.1B") == "TinyLlama/TinyLlama-1.1B"


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    cfg = load_config(
        None,
        [
            "data.kind=jsonl",
            "data.path=data/train.jsonl",
            "data.cache_dir=cache",
            "model.path=./model",
            "data.unseen.split_file=splits.txt",
        ],
    )
    assert cfg.data.path == str(tmp_path / "data" / "train.jsonl")
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.data.unseen.split_file == str(tmp_path / "splits.txt")


def test_hub_names_and_builtins_stay_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.kind=hf", "data.path=databricks/dolly", "model.path=org/model"])
    assert cfg.data.path == "databricks/dolly" and cfg.model.path == "org/model"
    assert load_config(None).model.path == "builtin:flexlora-tiny"


def test_defaults_and_shipped_values_still_load() -> None:
    cfg = config_from_dict({})
    assert cfg.federation.lr > 0 and cfg.seed == 0


@pytest.mark.parametrize(
    ("optimizer", "sgd_lr", "kind", "lr", "key"),
    [
        ("adamw", None, "AdamW", 3e-3, "federation.lr"),
        ("adamw", 0.5, "AdamW", 3e-3, "federation.lr"),  # AdamW ignores SGD's rate
        ("sgd", None, "SGD", 3e-3, "federation.lr"),  # unset: lr, as before the key existed
        ("sgd", 0.5, "SGD", 0.5, "federation.sgd_lr"),
    ],
)
def test_each_optimiser_takes_its_own_learning_rate(
    optimizer: str, sgd_lr: float | None, kind: str, lr: float, key: str
) -> None:
    import torch

    from flexlora.client import _step_size, make_optimizer

    overrides = ["federation.lr=3e-3", f"federation.optimizer={optimizer}"]
    if sgd_lr is not None:
        overrides.append(f"federation.sgd_lr={sgd_lr}")
    fed = load_config(None, overrides).federation
    built = make_optimizer([torch.nn.Parameter(torch.zeros(2))], fed)
    assert type(built).__name__ == kind
    assert built.param_groups[0]["lr"] == lr
    assert _step_size(fed) == (lr, key)  # the key a divergence message tells to lower
