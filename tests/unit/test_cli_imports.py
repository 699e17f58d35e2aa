"""The command line imports heavy libraries only where they are used (no timing here).

`flexlora --help` must not import torch (over a second) or anything that loads a model;
`flexlora aggregate` needs torch but never transformers or peft. Each check runs in a
fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flexlora.lora import LoraFactors, lora_scaling
from flexlora.peft_io import write_adapter

NOT_FOR_HELP = ("torch", "transformers", "peft", "matplotlib", "datasets", "rouge_score")
NOT_FOR_AGGREGATE = ("transformers", "peft", "matplotlib", "datasets", "rouge_score")
WATCHED = sorted({*NOT_FOR_HELP, "numpy", "rich", "safetensors"})


def imported_after(argv: list[str]) -> tuple[int, list[str]]:
    """Run flexlora.cli.main(argv) in a fresh interpreter; its exit status and the
    WATCHED modules it left in sys.modules."""
    code = (
        "import json, sys\n"
        "import flexlora.cli\n"
        "try:\n"
        f"    rc = flexlora.cli.main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        f"print(json.dumps([rc, [m for m in {WATCHED!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    rc, modules = json.loads(done.stdout.strip().splitlines()[-1])
    return int(rc or 0), modules


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["aggregate", "--help"],
        ["run", "--help"],
        ["compare", "--help"],
        ["data", "inspect", "--help"],
    ],
)
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    rc, modules = imported_after(argv)
    assert rc == 0
    assert [m for m in NOT_FOR_HELP if m in modules] == []


def test_aggregate_imports_torch_but_not_transformers_or_peft(tmp_path: Path) -> None:
    # Prepare: two small PEFT adapter folders
    g = torch.Generator().manual_seed(0)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    folders = []
    for k, r in enumerate((2, 3)):
        factors = {
            "model.layers.0.self_attn.q_proj": LoraFactors(
                torch.randn(8, r, generator=g), torch.randn(r, 6, generator=g), lora_scaling(4, r)
            )
        }
        folder = tmp_path / f"a{k}"
        write_adapter(folder, factors, config)
        folders.append(str(folder))
    # Execute
    rc, modules = imported_after(["aggregate", *folders, "--out", str(tmp_path / "out")])
    # Assert: it ran, needed torch, and loaded no model library
    assert rc == 0
    assert (tmp_path / "out" / "global" / "adapter_model.safetensors").is_file()
    assert "torch" in modules
    assert [m for m in NOT_FOR_AGGREGATE if m in modules] == []


def test_the_training_path_does_not_import_the_scorer() -> None:
    # What a Flower ClientApp imports to train (it starts afresh for every message);
    # Rouge-L is scored on the server, and rouge-score brings nltk and scipy.stats.
    code = (
        "import json, sys\n"
        "import flexlora.client, flexlora.experiment, flexlora.flower.client_app\n"
        "print(json.dumps([m for m in ('rouge_score', 'nltk') if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
