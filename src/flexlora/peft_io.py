r"""Read and write PEFT LoRA adapter folders as flexlora factors.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`.
PEFT saves one module's factors as

    base_model.model.<module>.lora_A.weight   (r, in)
    base_model.model.<module>.lora_B.weight   (out, r)

where `<module>` is the module's name inside the base model (for a Llama causal LM,
`model.layers.0.self_attn.q_proj`). That name, with the `base_model.model.` prefix and
the `.lora_A.weight` / `.lora_B.weight` suffix removed, is the *canonical module name*
flexlora uses everywhere; `PeftAdapter.tensor_names` keeps the original tensor names so
that an adapter is written back under exactly the names it was read with.

A module's scaling follows PEFT: rank and alpha come from `rank_pattern` /
`alpha_pattern` when a pattern key matches the module (see `match_pattern_key`), else
from `r` / `lora_alpha`; scaling is alpha / r, or alpha / sqrt(r) with `use_rslora`.

Writing keeps a module's scaling in the config when the template's alpha and rsLoRA
flag give it exactly at the written rank (a client that trains on keeps its own
scaling), and otherwise folds the scaling into B with alpha chosen so that PEFT's
scaling is exactly 1 (as peft's merge_utils does). Modules whose rank or alpha differs
from the folder's `r` / `lora_alpha` get `rank_pattern` / `alpha_pattern` entries
keyed `^<escaped module name>`, which PEFT matches against that one module only.
Such keys need PEFT's current matching rule, `(.*\.)?(key)$` (checked on peft 0.21);
older releases matched `.*\.key$`, which no `^` key satisfies, so loading there fails
with a size mismatch rather than silently.

Only plain LoRA on 2-D weights is supported: DoRA, trained biases, modules_to_save,
embedding LoRA and the other LoRA variants are refused with a clear error rather than
silently dropped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from flexlora.aggregation.base import GlobalUpdate
from flexlora.atomic import atomic_folder
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"

# PEFT's LoraConfig defaults, used when a config omits the field.
_DEFAULT_R = 8
_DEFAULT_ALPHA = 8

# Config fields that turn on something other than plain LoRA: refused when truthy.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora: true)",
    "lora_bias": "trained LoRA biases (lora_bias: true)",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "layer_replication": "layer replication",
    "use_qalora": "QALoRA (use_qalora: true)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
}

# Initialisations that subtract the initial factors from the base weights: such an
# adapter is an update of a modified model, not of W0 (PEFT converts it on request).
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")


@dataclass(frozen=True)
class PeftAdapter:
    """One PEFT LoRA adapter folder, read into flexlora factors.

    factors: canonical module name -> factors with that module's PEFT scaling.
    config: the adapter_config.json as read.
    alphas: canonical module name -> the lora_alpha PEFT applies to it (alpha_pattern honoured).
    tensor_names: canonical module name -> (lora_A tensor name, lora_B tensor name) in the file.
    """

    folder: Path
    config: dict[str, Any]
    factors: dict[str, LoraFactors]
    alphas: dict[str, float]
    tensor_names: dict[str, tuple[str, str]]

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def ranks(self) -> dict[str, int]:
        """Canonical module name -> rank, read from the tensors' shapes."""
        return {module: f.rank for module, f in self.factors.items()}


def match_pattern_key(pattern_keys: Iterable[str], module: str) -> str | None:
    """The first pattern key PEFT applies to `module`, or None.

    PEFT treats each key as a regular expression that must match a dot-separated
    suffix of the module name: `re.match(rf"(.*\\.)?({key})$", module)`, first key in
    order wins. So `q_proj` matches every q_proj, `layers.1.self_attn.q_proj` matches
    `model.layers.1.self_attn.q_proj` but not `...layers.11...`, and a key starting
    with `^` matches only from the start of the name.
    """
    for key in pattern_keys:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as e:
            raise FlexLoraError(
                f"pattern key {key!r} is not a valid regular expression ({e})"
            ) from e
    return None


def exact_pattern_key(module: str) -> str:
    """A rank_pattern / alpha_pattern key that PEFT matches against `module` and nothing else.

    `^` forces the match to start at the beginning of the name and escaping the dots
    stops `layers.1.` from matching `layers.11.` or any other character.
    """
    return "^" + re.escape(module)


def module_rank_and_alpha(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    """The (r, lora_alpha) PEFT gives `module` under `config`, patterns honoured."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r_key = match_pattern_key(rank_pattern, module)
    a_key = match_pattern_key(alpha_pattern, module)
    r = rank_pattern[r_key] if r_key is not None else config.get("r", _DEFAULT_R)
    alpha = alpha_pattern[a_key] if a_key is not None else config.get("lora_alpha", _DEFAULT_ALPHA)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise FlexLoraError(f"module {module}: rank must be a positive int, config gives {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not _finite(alpha):
        raise FlexLoraError(
            f"module {module}: lora_alpha must be a finite number, config gives {alpha!r}"
        )
    return r, float(alpha)


def _finite(x: float) -> bool:
    """math.isfinite, False (not OverflowError) for an int too large for a float."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def check_lora_config(config: Mapping[str, Any], where: str) -> None:
    """Raise unless `config` describes plain LoRA that flexlora can read and write."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise FlexLoraError(
            f"{where}: not a LoRA adapter (peft_type is {peft_type!r}, expected 'LORA')"
        )
    bias = config.get("bias", "none")
    if bias != "none":
        raise FlexLoraError(
            f"{where}: trained biases (bias: {bias!r}) are not supported, only 'none'"
        )
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise FlexLoraError(f"{where}: {what} is not supported")
    init = config.get("init_lora_weights")
    if init == "mica":
        raise FlexLoraError(
            f"{where}: the MiCA LoRA variant (init_lora_weights: mica) is not supported"
        )
    if isinstance(init, str) and init.startswith(_BASE_CHANGING_INITS):
        raise FlexLoraError(
            f"{where}: init_lora_weights {init!r} changes the base weights, so its factors "
            "are not an update of the original model (convert the adapter first)"
        )
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            raise FlexLoraError(f"{where}: {name} must be a mapping")


def read_adapter(folder: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA adapter folder; bad input raises FlexLoraError naming folder and module."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlexLoraError(f"{folder}: adapter folder not found")
    config_path = folder / CONFIG_NAME
    weights_path = folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FlexLoraError(f"{folder}: no {CONFIG_NAME}")
    if not weights_path.is_file():
        other = " (only safetensors is read, found adapter_model.bin)"
        other = other if (folder / "adapter_model.bin").is_file() else ""
        raise FlexLoraError(f"{folder}: no {WEIGHTS_NAME}{other}")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, RecursionError) as e:  # broken JSON, not UTF-8, a 5,000-digit int
        reason = "nested too deep" if isinstance(e, RecursionError) else str(e)[:200]
        raise FlexLoraError(f"{config_path}: not valid JSON ({reason})") from e
    if not isinstance(config, dict):
        raise FlexLoraError(f"{config_path}: expected a JSON object")
    check_lora_config(config, str(folder))
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise FlexLoraError(f"{weights_path}: cannot read safetensors file ({e})") from e

    names = _pair_tensor_names(tensors, folder)
    factors: dict[str, LoraFactors] = {}
    alphas: dict[str, float] = {}
    for module, (a_name, b_name) in sorted(names.items()):
        A, B = tensors[a_name], tensors[b_name]
        where = f"{folder}: module {module}"
        for label, t in (("lora_A", A), ("lora_B", B)):
            if t.ndim != 2:
                raise FlexLoraError(
                    f"{where}: {label} is {t.ndim}-D {tuple(t.shape)}, expected 2-D"
                )
            if not t.is_floating_point():
                raise FlexLoraError(f"{where}: {label} has non-float dtype {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise FlexLoraError(f"{where}: {label} contains NaN or Inf")
        # A: (r, in), B: (out, r)
        if A.shape[0] != B.shape[1]:
            raise FlexLoraError(
                f"{where}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} disagree on the rank"
            )
        try:
            r, alpha = module_rank_and_alpha(config, module)
        except FlexLoraError as e:
            raise FlexLoraError(f"{folder}: {e}") from e
        if A.shape[0] != r:
            raise FlexLoraError(
                f"{where}: tensors have rank {A.shape[0]} but the config gives r={r} "
                "(check r / rank_pattern)"
            )
        alphas[module] = alpha
        factors[module] = LoraFactors(
            B=B, A=A, scaling=lora_scaling(alpha, r, bool(config.get("use_rslora")))
        )
    logger.debug("read %d LoRA modules from %s", len(factors), folder)
    return PeftAdapter(
        folder=folder, config=config, factors=factors, alphas=alphas, tensor_names=names
    )


def _pair_tensor_names(tensors: Mapping[str, Tensor], folder: Path) -> dict[str, tuple[str, str]]:
    """Canonical module name -> (lora_A name, lora_B name); refuse anything but plain LoRA."""
    a_names: dict[str, str] = {}
    b_names: dict[str, str] = {}
    for name in tensors:
        if name.endswith(_A_SUFFIX):
            side, stem = a_names, name[: -len(_A_SUFFIX)]
        elif name.endswith(_B_SUFFIX):
            side, stem = b_names, name[: -len(_B_SUFFIX)]
        else:
            raise FlexLoraError(f"{folder}: {_unsupported_tensor(name)}")
        module = stem.removeprefix(PEFT_PREFIX)
        if module in side:
            raise FlexLoraError(
                f"{folder}: module {module} appears twice ({side[module]} and {name})"
            )
        side[module] = name
    for module in sorted(a_names.keys() - b_names.keys()):
        raise FlexLoraError(f"{folder}: module {module} has lora_A but no lora_B")
    for module in sorted(b_names.keys() - a_names.keys()):
        raise FlexLoraError(f"{folder}: module {module} has lora_B but no lora_A")
    if not a_names:
        raise FlexLoraError(f"{folder}: {WEIGHTS_NAME} holds no LoRA tensors")
    return {module: (a_names[module], b_names[module]) for module in a_names}


def _unsupported_tensor(name: str) -> str:
    """Why a tensor that is neither lora_A.weight nor lora_B.weight is refused."""
    if "lora_magnitude_vector" in name:
        return f"tensor {name} is a DoRA magnitude vector; DoRA is not supported"
    if "lora_embedding_A" in name or "lora_embedding_B" in name:
        return f"tensor {name} is an embedding LoRA; embedding LoRA is not supported"
    if "modules_to_save" in name:
        return f"tensor {name} belongs to modules_to_save; fully trained modules are not supported"
    if name.endswith(".bias"):
        return f"tensor {name} is a trained bias; trained biases are not supported"
    return (
        f"tensor {name} is not a LoRA factor (expected names ending in {_A_SUFFIX} / {_B_SUFFIX})"
    )


def write_adapter(
    folder: str | Path,
    factors: Mapping[str, LoraFactors],
    template_config: Mapping[str, Any],
    *,
    names_from: PeftAdapter | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write `factors` as a PEFT adapter folder loadable with `PeftModel.from_pretrained`.

    PEFT's effective update of every module is exactly `factors[m].scaling · B @ A`:
    - where the template's alpha for the module (alpha_pattern honoured) and its
      use_rslora give exactly `factors[m].scaling` at the module's rank, that alpha is
      kept and B is written as is, so a client that trains on keeps its own scaling;
    - otherwise the scaling is folded into B and alpha is chosen so that PEFT's scaling
      is exactly 1 (alpha = r, or sqrt(r) under rsLoRA), as peft's merge_utils does.
    The config is the template (base model, target_modules, task type ... kept) with r
    and lora_alpha the most common values and `^<module>` pattern entries for the rest.
    Tensors are named as in `names_from` when given, else
    `base_model.model.<module>.lora_{A,B}.weight`, and stored in `dtype`. A module of
    rank 0 gets one zero component (PEFT needs r ≥ 1). The folder appears whole or not
    at all; an existing non-empty folder is an error.
    """
    folder = Path(folder)
    check_lora_config(template_config, f"{folder}: template config")
    if not factors:
        raise FlexLoraError(f"{folder}: no modules to write")
    if names_from is not None:
        unknown = sorted(factors.keys() - names_from.tensor_names.keys())
        if unknown:
            raise FlexLoraError(f"{folder}: module {unknown[0]} is not in {names_from.folder}")
    use_rslora = bool(template_config.get("use_rslora", False))

    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for module, f in sorted(factors.items()):
        B, A = _checked_factors(f, module, folder)  # (out, r), (r, in), float64
        r = int(A.shape[0])
        _, alpha = module_rank_and_alpha(template_config, module)
        if lora_scaling(alpha, r, use_rslora) != f.scaling:
            B = B * f.scaling  # fold: PEFT's scaling becomes exactly 1 with this alpha
            alpha = math.sqrt(r) if use_rslora else float(r)
        a_name, b_name = (
            names_from.tensor_names[module]
            if names_from is not None
            else (f"{PEFT_PREFIX}{module}{_A_SUFFIX}", f"{PEFT_PREFIX}{module}{_B_SUFFIX}")
        )
        tensors[a_name] = A.to(dtype=dtype).contiguous()
        tensors[b_name] = B.to(dtype=dtype).contiguous()
        ranks[module], alphas[module] = r, alpha

    config = pattern_config(template_config, ranks, alphas)
    with atomic_folder(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    logger.debug("wrote %d LoRA modules to %s", len(ranks), folder)


def write_global_adapter(
    folder: str | Path,
    global_update: Mapping[str, GlobalUpdate],
    template_config: Mapping[str, Any],
    *,
    names_from: PeftAdapter | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the global update dW = B @ A of every module as an exact PEFT adapter.

    The update has its scaling folded in already, so the adapter declares alpha = r
    and no rsLoRA (PEFT scaling 1). Each module keeps the rank of its factors; an
    all-zero update of rank 0 is written as one zero component. See `write_adapter`.
    """
    factors = {m: LoraFactors(B=g.B, A=g.A, scaling=1.0) for m, g in global_update.items()}
    template = {**template_config, "use_rslora": False}
    write_adapter(folder, factors, template, names_from=names_from, dtype=dtype)


def pattern_config(
    template_config: Mapping[str, Any], ranks: Mapping[str, int], alphas: Mapping[str, float]
) -> dict[str, Any]:
    """The template with each module m at rank `ranks[m]` and alpha `alphas[m]` under PEFT.

    r and lora_alpha are the most common values (ties: the smallest); every module that
    differs gets an exact `^<module>` key in rank_pattern / alpha_pattern. The template's
    own patterns are replaced. Raises if PEFT's matching would resolve any module
    differently.
    """
    r = _most_common(ranks.values())
    alpha = _most_common(alphas.values())
    config = dict(template_config)
    config.update(
        r=r,
        lora_alpha=_json_number(alpha),
        rank_pattern={exact_pattern_key(m): v for m, v in sorted(ranks.items()) if v != r},
        alpha_pattern={
            exact_pattern_key(m): _json_number(v) for m, v in sorted(alphas.items()) if v != alpha
        },
    )
    for module in ranks:
        # Guard against a module name that PEFT would resolve differently.
        if module_rank_and_alpha(config, module) != (ranks[module], alphas[module]):
            raise FlexLoraError(f"module {module}: cannot express its rank and alpha exactly")
    return config


def _most_common(values: Iterable[Any]) -> Any:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def _json_number(x: float) -> int | float:
    """16.0 -> 16, so that configs read as PEFT writes them; other floats unchanged."""
    return int(x) if float(x).is_integer() else float(x)


def _checked_factors(f: LoraFactors, module: str, folder: Path) -> tuple[Tensor, Tensor]:
    """(B, A) in float64 on the CPU, checked finite; rank 0 becomes one zero component."""
    B = f.B.detach().to(device="cpu", dtype=torch.float64)  # (out, r)
    A = f.A.detach().to(device="cpu", dtype=torch.float64)  # (r, in)
    if not (bool(torch.isfinite(B).all()) and bool(torch.isfinite(A).all())):
        raise FlexLoraError(f"{folder}: module {module}: factors to write contain NaN or Inf")
    if not math.isfinite(f.scaling):
        raise FlexLoraError(f"{folder}: module {module}: scaling {f.scaling} is not finite")
    if A.shape[0] == 0:
        out, in_ = f.shape
        B, A = B.new_zeros(out, 1), A.new_zeros(1, in_)
    return B, A
