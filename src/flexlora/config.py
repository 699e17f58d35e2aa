"""One typed, validated experiment config: YAML file + `--set KEY=VALUE` overrides.

Each group of hyperparameters is a dataclass whose invariants are checked at
construction; unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from flexlora.assets import looks_local
from flexlora.errors import FlexLoraError

# The module groups used by rank types given as a mapping ({attention: 30, mlp: 200}).
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}

# What torch.device accepts and this project can run on; anything else fails only once the
# model is loaded, after the data, so it is refused with the rest of the config.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _require_finite(group: Any, prefix: str) -> None:
    """Every float field of a config group is finite: a NaN slips past `x <= 0` checks
    (every comparison with it is false) and an Inf step size or norm bound is no setting."""
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise FlexLoraError(f"{prefix}.{f.name} is not a finite number, got {value}")


def _require_positive(value: float, key: str) -> None:
    if not value > 0:  # also refuses NaN
        raise FlexLoraError(f"{key} must be positive, got {value}")


@dataclass
class ModelConfig:
    path: str = "builtin:flexlora-tiny"
    """Local path or hub id of a causal LM; `builtin:flexlora-tiny` is the shipped model."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 on the CPU."""
    device: str = "auto"
    """auto: cuda when available, else cpu."""
    target_modules: list[str] = field(
        default_factory=lambda: [*MODULE_GROUPS["attention"], *MODULE_GROUPS["mlp"]]
    )

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise FlexLoraError("model.target_modules must name at least one module")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise FlexLoraError(
                f"model.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )


@dataclass
class LoraSettings:
    alpha: float = 16.0
    dropout: float = 0.05
    rslora: bool = False
    """rsLoRA scaling alpha / sqrt(r) instead of alpha / r."""

    def __post_init__(self) -> None:
        _require_finite(self, "lora")
        _require_positive(self.alpha, "lora.alpha")
        if not 0 <= self.dropout < 1:
            raise FlexLoraError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class UnseenConfig:
    """Clients held out of training up front; the headline metric is scored on them.

    At most one of count / fraction / ids / split_file is set.
    """

    count: int | None = None
    fraction: float | None = None
    ids: list[str] | None = None
    split_file: str | None = None
    """A file of held-out task names, one a line (SNI's splits/default/test_tasks.txt)."""

    def __post_init__(self) -> None:
        _require_finite(self, "data.unseen")
        given = [
            k for k in ("count", "fraction", "ids", "split_file") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise FlexLoraError(
                f"data.unseen: give one of count, fraction, ids, split_file, not {given}"
            )
        if self.count is not None and self.count < 0:
            raise FlexLoraError(f"data.unseen.count must be >= 0, got {self.count}")
        if self.fraction is not None and not 0 <= self.fraction < 1:
            raise FlexLoraError(f"data.unseen.fraction must be in [0, 1), got {self.fraction}")


@dataclass
class DataConfig:
    kind: Literal["synthetic", "flexlora-ni", "ni-tasks", "dolly", "jsonl", "hf"] = "synthetic"
    path: str | None = None
    """Folder or file of the dataset (hub name for kind=hf)."""
    partition: Literal["natural", "dirichlet", "iid"] = "natural"
    num_clients: int | None = None
    """Number of clients for dirichlet / iid partitions."""
    dirichlet_alpha: float = 0.5
    min_client_size: int = 10
    label_field: str = "category"
    field_map: dict[str, str] = field(default_factory=dict)
    """For jsonl / hf: our field (instruction, input, output, category) -> the source's field."""
    hf_split: str = "train"
    template: Literal["alpaca", "plain", "custom"] = "alpaca"
    custom_template: str | None = None
    """For template=custom: a format string with {instruction}, {input} (and optional {output})."""
    max_length: int = 256
    drop_overlong: bool = False
    """Drop examples longer than max_length (counted) instead of truncating them (counted)."""
    train_on_inputs: bool = False
    max_train_per_client: int | None = None
    max_eval_per_client: int | None = None
    unseen: UnseenConfig = field(default_factory=UnseenConfig)
    synthetic: dict[str, Any] = field(default_factory=dict)
    """Options of the synthetic suite (see flexlora.data.synthetic)."""
    cache_dir: str | None = None
    """Where tokenised clients are cached; default ~/.cache/flexlora."""

    def __post_init__(self) -> None:
        _require_finite(self, "data")
        if self.kind not in ("synthetic",) and self.path is None:
            raise FlexLoraError(f"data.path is required for data.kind={self.kind}")
        if self.partition in ("dirichlet", "iid") and (
            self.num_clients is None or self.num_clients < 1
        ):
            raise FlexLoraError(
                f"data.num_clients must be a positive int for partition={self.partition}"
            )
        if self.dirichlet_alpha <= 0:
            raise FlexLoraError(
                f"data.dirichlet_alpha must be positive, got {self.dirichlet_alpha}"
            )
        if self.max_length < 8:
            raise FlexLoraError(f"data.max_length must be at least 8, got {self.max_length}")
        if self.template == "custom" and not self.custom_template:
            raise FlexLoraError("data.custom_template is required when data.template=custom")


@dataclass
class FederationConfig:
    rounds: int = 10
    clients_per_round: int | None = None
    """Number of clients sampled a round; overrides fraction when set."""
    fraction: float = 0.33
    """Share of the seen clients sampled a round: 8 of the offline default's 24."""
    local_steps: int | None = 20
    """Optimizer steps per client per round; when None, local_epochs is used."""
    local_epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw: FedIT as the authors ran it; sgd: plain FedAvg."""
    lr: float = 3e-3
    """AdamW's step size (and SGD's while sgd_lr is null). The offline default's rounds,
    local steps and rate were chosen for FedIT at the smallest rank on the seen clients'
    eval split (benchmarks/tune_default.py)."""
    sgd_lr: float | None = None
    """SGD's step size, for the recipes that train with SGD (FedAvg) and for optimizer
    sgd; null: lr. Its own setting because AdamW's rate means nothing to SGD: a grid
    that pairs FedIT with FedAvg chooses each for its own baseline."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    min_replies: int = 1
    """A round whose clients give fewer usable updates than this ends the run (resumable)."""
    max_update_norm: float | None = None
    """A client whose update ‖s B A‖_F exceeds this on any module is left out of its round."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more time."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Run the forward pass in bfloat16 autocast (the factors and optimiser stay float32)."""

    def __post_init__(self) -> None:
        _require_finite(self, "federation")
        if self.rounds < 1:
            raise FlexLoraError(f"federation.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.fraction <= 1:
            raise FlexLoraError(f"federation.fraction must be in (0, 1], got {self.fraction}")
        if self.clients_per_round is not None and self.clients_per_round < 1:
            raise FlexLoraError(
                f"federation.clients_per_round must be >= 1, got {self.clients_per_round}"
            )
        if self.local_steps is not None and self.local_steps < 1:
            raise FlexLoraError(f"federation.local_steps must be >= 1, got {self.local_steps}")
        if self.local_epochs <= 0:
            raise FlexLoraError(
                f"federation.local_epochs must be positive, got {self.local_epochs}"
            )
        if self.batch_size < 1 or self.grad_accum < 1:
            raise FlexLoraError("federation.batch_size and federation.grad_accum must be >= 1")
        _require_positive(self.lr, "federation.lr")
        if self.sgd_lr is not None:
            _require_positive(self.sgd_lr, "federation.sgd_lr")
        if self.weight_decay < 0:
            raise FlexLoraError(f"federation.weight_decay must be >= 0, got {self.weight_decay}")
        # A negative bound flips the clipped gradient's sign (gradient ascent), zero wipes it:
        # no clipping is `null`.
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise FlexLoraError(
                "federation.max_grad_norm must be positive (or null for no clipping), "
                f"got {self.max_grad_norm}"
            )
        if self.min_replies < 1:
            raise FlexLoraError(f"federation.min_replies must be >= 1, got {self.min_replies}")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise FlexLoraError(
                f"federation.max_update_norm must be positive, got {self.max_update_norm}"
            )


@dataclass
class RanksConfig:
    types: list[int | dict[str, int]] = field(default_factory=lambda: [2, 4, 8, 16])
    """Rank types: an int for every module, or a mapping module group / module name -> rank."""
    distribution: str | list[float] = "uniform"
    """uniform, heavy-tail-light, heavy-tail-strong, normal, extreme, or a probability a type."""
    assign: dict[str, int] = field(default_factory=dict)
    """Client id -> the index (from 0) of its rank type, for clients whose capacity is
    known; the others draw theirs from the distribution."""

    def __post_init__(self) -> None:
        if not self.types:
            raise FlexLoraError("ranks.types must list at least one rank type")
        for client, index in self.assign.items():
            if not 0 <= index < len(self.types):
                raise FlexLoraError(
                    f"ranks.assign.{client}: {index} is not a rank type index "
                    f"(0 to {len(self.types) - 1})"
                )
        for t in self.types:
            values = t.values() if isinstance(t, dict) else [t]
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise FlexLoraError(f"ranks.types: every rank must be a positive int, got {t}")
        if isinstance(self.distribution, list) and not all(
            math.isfinite(p) and p >= 0 for p in self.distribution
        ):
            raise FlexLoraError(
                "ranks.distribution: every probability must be a finite number >= 0, "
                f"got {self.distribution}"
            )


@dataclass
class EvalConfig:
    every: int = 1
    """Evaluate every N rounds (and always after the last)."""
    mode: Literal["generate", "teacher-forced"] = "generate"
    """generate: Rouge-L of greedy generations; teacher-forced: Rouge-L of argmax tokens (fast)."""
    max_new_tokens: int = 16
    """Generation length; the synthetic suite's answers fit in 12 tokens, real data wants 64."""
    batch_size: int = 16
    max_examples_per_client: int | None = None
    seen: bool = True
    """Also score the seen clients' eval split."""
    baseline: bool = True
    """Also score the base model once before round 1 (summary.json's `baseline`), so that
    every later figure has its starting point."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise FlexLoraError(f"eval.every must be >= 1, got {self.every}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise FlexLoraError("eval.max_new_tokens and eval.batch_size must be >= 1")


@dataclass
class FlowerConfig:
    """The Flower engine (`engine: flower`, or `flexlora run --engine flower`)."""

    supernodes: int = 2
    """SuperNodes of the Simulation Engine; the sampled clients are spread over them."""
    client_cpus: float = 1.0
    """CPUs each ClientApp reserves in the Simulation Engine."""
    client_gpus: float = 0.0
    """GPUs (or a fraction of one) each ClientApp reserves in the Simulation Engine."""
    round_timeout: float = 3600.0
    """Seconds the server waits for a round's replies; a node that has not answered by
    then is left out of that round."""
    transport_dtype: Literal["float32", "float16"] = "float32"
    """Factors travel in this dtype (aggregation stays float32); float16 halves traffic."""

    def __post_init__(self) -> None:
        if self.supernodes < 1:
            raise FlexLoraError(f"flower.supernodes must be >= 1, got {self.supernodes}")
        if not (self.client_cpus > 0 and math.isfinite(self.client_cpus)):
            raise FlexLoraError(f"flower.client_cpus must be positive, got {self.client_cpus}")
        if not (self.client_gpus >= 0 and math.isfinite(self.client_gpus)):
            raise FlexLoraError(f"flower.client_gpus must be >= 0, got {self.client_gpus}")
        if not self.round_timeout > 0:
            raise FlexLoraError(f"flower.round_timeout must be positive, got {self.round_timeout}")


@dataclass
class CompareConfig:
    """The grid `flexlora compare` runs when its command line names none (a preset's grid)."""

    methods: list[str] = field(default_factory=list)
    """Rows: methods, RECIPE+AGGREGATION pairs, RECIPE-min / RECIPE-max (empty: the default)."""
    distributions: list[str] = field(default_factory=list)
    """Columns: resource distributions (empty: the default)."""
    seeds: int = 1
    """Runs per cell, seeds seed, seed + 1, ...: each its own suite and partition."""

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise FlexLoraError(f"compare.seeds must be >= 1, got {self.seeds}")


@dataclass
class ExperimentConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    ranks: RanksConfig = field(default_factory=RanksConfig)
    method: str = "flexlora"
    """A method name (flexlora, fedit, zeropad, hetlora, flora, ffa, florist, fedex) or a
    RECIPE+AGGREGATION pair (e.g. fedavg+flexlora; recipes: local, fedit, fedavg,
    hetlora, ffa)."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """The aggregation's options (with a single method name, the recipe's too)."""
    recipe_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Recipe name -> its options, for RECIPE+AGGREGATION methods (e.g. {slora:
    {sparse_rounds: 1}}); one config can hold every recipe's, for a compare grid."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: Literal["in-process", "flower"] = "in-process"
    """in-process: everything in this process; flower: Flower's Simulation Engine."""
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise FlexLoraError(f"seed must be >= 0, got {self.seed}")
        self._check_rank_type_keys()

    def _check_rank_type_keys(self) -> None:
        """A rank type's mapping keys are module groups or target modules: any other key
        would be ignored silently (a typo such as `atention` leaves its modules unranked or
        on another key's rank)."""
        known = {*MODULE_GROUPS, *self.model.target_modules}
        for i, rank_type in enumerate(self.ranks.types):
            if not isinstance(rank_type, dict):
                continue
            for key in rank_type:
                if key not in known:
                    raise FlexLoraError(
                        f"ranks.types[{i}]: unknown module or group {key!r} (known: "
                        f"{', '.join(sorted(MODULE_GROUPS))} or a name in model.target_modules: "
                        f"{', '.join(self.model.target_modules)})"
                    )


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; build nested dataclasses. Raise naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except FlexLoraError as e:
                errors.append(str(e))
        raise FlexLoraError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise FlexLoraError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise FlexLoraError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise FlexLoraError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise FlexLoraError(f"{key}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FlexLoraError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int of 309 digits or more
                raise FlexLoraError(f"{key}: the number is too large (over 1.8e308)") from None
        if isinstance(value, str):
            # YAML 1.1 reads an exponent without a dot (3e-4, 1E+2) as a string
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise FlexLoraError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FlexLoraError(f"{key}: expected an int, got {value!r}")
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise FlexLoraError(f"{key}: expected a {tp.__name__}, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp} at {key}")


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names, key=str)  # YAML keys may be ints, dates, None
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise FlexLoraError(
            f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, values)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise FlexLoraError(f"--set {dotted}: {k} is not a group")
        node = child
    node[keys[-1]] = value


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (PyYAML alone would keep the last silently)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"key {key!r} on line {line} repeats the one on line {first_line}")
        self.key, self.line, self.first_line = key, line, first_line


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with a repeated key: a second `data:` block
    would otherwise replace the first whole, and the run would use defaults the user
    never chose."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` overrides by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_lines:
                    raise DuplicateKeyError(key, line, first_lines[key])
                first_lines[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely, refusing repeated keys (DuplicateKeyError); a value Python
    cannot hold (an int of over 4,300 digits, nesting deeper than the stack) is a
    YAMLError too."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except (ValueError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else str(e).split(":")[0]
        raise yaml.YAMLError(f"a value cannot be read ({reason})") from e


def parse_override(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE parsed as YAML (so 3 is an int, [1,2] a list, null None)."""
    if "=" not in text:
        raise FlexLoraError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise FlexLoraError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, yaml_load(raw) if raw.strip() else ""
    except DuplicateKeyError as e:
        raise FlexLoraError(f"--set {key}: {e}") from e
    except yaml.YAMLError as e:
        raise FlexLoraError(
            f"--set {key}: cannot parse {raw!r} as YAML ({e.__class__.__name__})"
        ) from e


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> ExperimentConfig:
    """Read a YAML file (or start from defaults), apply `KEY=VALUE` overrides, validate."""
    tree = read_config_file(Path(path)) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return absolute_paths(config_from_dict(tree))


def read_config_file(p: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; FlexLoraError naming the file otherwise."""
    if not p.is_file():
        raise FlexLoraError(f"config file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FlexLoraError(
            f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
            "save it as UTF-8"
        ) from e
    except OSError as e:
        raise FlexLoraError(f"{p}: cannot read it ({e.strerror})") from e
    try:
        loaded = yaml_load(text)
    except DuplicateKeyError as e:
        raise FlexLoraError(f"{p}: {e}; give each key once") from e
    except yaml.YAMLError as e:
        raise FlexLoraError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise FlexLoraError(f"{p}: the top level must be a mapping")
    return loaded or {}


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with its local paths made absolute, so that the config.yaml a run saves
    still points at the same files when `--resume` is run from another directory.

    Hub names (model.path `org/name`, data.path of kind=hf) stay as written unless a
    local path of that name exists, which is what transformers and datasets would load.
    """
    model, data = cfg.model, cfg.data

    def local(path: str) -> bool:
        return looks_local(path) or Path(path).expanduser().exists()

    if not model.path.startswith("builtin:") and local(model.path):
        model = dataclasses.replace(model, path=_absolute(model.path))
    path = data.path
    if path is not None and (data.kind != "hf" or local(path)):
        path = _absolute(path)
    cache_dir = _absolute(data.cache_dir) if data.cache_dir is not None else None
    unseen = data.unseen
    if unseen.split_file is not None:
        unseen = dataclasses.replace(unseen, split_file=_absolute(unseen.split_file))
    data = dataclasses.replace(data, path=path, cache_dir=cache_dir, unseen=unseen)
    return dataclasses.replace(cfg, model=model, data=data)
