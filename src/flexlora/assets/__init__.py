"""Files shipped inside the package: the project's own tiny base model.

`builtin:<name>` in `model.path` names a model folder shipped here; see
flexlora.tools.build_tiny_model for how `flexlora-tiny` is built.
"""

from __future__ import annotations

from pathlib import Path

from flexlora.errors import FlexLoraError

BUILTIN_PREFIX = "builtin:"
ASSETS_DIR = Path(__file__).resolve().parent
BUILTIN_MODELS: dict[str, Path] = {"flexlora-tiny": ASSETS_DIR / "flexlora-tiny"}
"""Shipped model folders by name."""


def looks_local(path: str) -> bool:
    """Whether `path` can only mean a file or folder on this machine, never a hub name
    (`org/name`): absolute, or starting with ./ ../ or ~."""
    return path.startswith(("/", "./", "../", "~")) or path in (".", "..")


def resolve_model_path(path: str) -> str:
    """Map `builtin:<name>` to its shipped folder; return any other string unchanged.

    Raises FlexLoraError for an unknown builtin name, a builtin whose files are missing
    from the installation, or a local folder that does not exist (transformers would take
    it for a hub id and answer "Repo id must be in the form...").
    """
    if not path.startswith(BUILTIN_PREFIX):
        if looks_local(path) and not Path(path).expanduser().is_dir():
            raise FlexLoraError(f"model.path: model folder not found: {path}")
        return path
    name = path[len(BUILTIN_PREFIX) :]
    folder = BUILTIN_MODELS.get(name)
    if folder is None:
        raise FlexLoraError(
            f"model.path: unknown builtin model {name!r} (known: {', '.join(BUILTIN_MODELS)})"
        )
    if not (folder / "config.json").is_file():
        raise FlexLoraError(
            f"model.path: builtin model {name!r} is missing from {folder}; rebuild it with "
            f"`python -m flexlora.tools.build_tiny_model --out {folder}`"
        )
    return str(folder)
