"""End to end: `flexlora run` and `flexlora compare` on a tiny 2-layer model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine_fixtures import make_tiny_model, quick_overrides, set_args, without_timings
from flexlora.aggregation.ffa import ffa_shared_A
from flexlora.cli import main
from flexlora.config import load_config
from flexlora.experiment import run_experiment
from flexlora.methods import get_federated_method
from flexlora.peft_io import read_adapter
from flexlora.simulation import RunObserver

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO.parent / "shared" / "assets"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def run_cli(args: list[str]) -> int:
    return main(args)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_leaves_every_output_and_the_loss_falls(tiny_model: Path, tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    sets = quick_overrides(tiny_model, tmp_path / "cache")
    # Execute
    code = run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)])
    # Assert
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["final"]["unseen_rougeL"] is not None
    assert summary["final"]["unseen_loss"] > 0
    # the base model, scored before round 1, is the starting point the run improved on
    assert summary["baseline"]["unseen_loss"] > summary["final"]["unseen_loss"]
    assert summary["baseline"]["seen_loss"] > 0
    rounds = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(len(r["clients"]) == 3 for r in rounds)
    assert rounds[-1]["train_loss"] < rounds[0]["train_loss"]
    # the global model improves on unseen clients from round 1 to round 3
    assert rounds[-1]["eval"]["unseen"]["loss"] < rounds[0]["eval"]["unseen"]["loss"]
    energy = rounds[0]["aggregation"]["discarded_energy"]
    assert set(next(iter(energy.values()))) == {"rank-2", "rank-4", "rank-8"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["federation"]["rounds"] == 3 and resolved["method"] == "flexlora"
    for name in ("global", "rank-2", "rank-4", "rank-8"):
        assert (out / "adapters" / name / "adapter_config.json").is_file()
        assert (out / "adapters" / name / "adapter_model.safetensors").is_file()
    for plot in ("metrics.png", "rank_distribution.png", "truncation_energy.png"):
        assert (out / "plots" / plot).stat().st_size > 1000


def test_same_seed_same_metrics(tiny_model: Path, tmp_path: Path) -> None:
    sets = [*quick_overrides(tiny_model, tmp_path / "cache"), "federation.rounds=2"]
    args = set_args(sets)
    assert run_cli(["run", "--quiet", "--out", str(tmp_path / "a"), *args]) == 0
    assert run_cli(["run", "--quiet", "--out", str(tmp_path / "b"), *args]) == 0
    a, b = (
        read_jsonl(tmp_path / "a" / "metrics.jsonl"),
        read_jsonl(tmp_path / "b" / "metrics.jsonl"),
    )
    for ra, rb in zip(a, b, strict=True):
        assert ra["clients"] == rb["clients"]
        assert ra["train_loss"] == rb["train_loss"]
        assert ra["eval"]["unseen"] == {
            **rb["eval"]["unseen"],
            "seconds": ra["eval"]["unseen"]["seconds"],
        }
    d_args = [*args, "--set", "eval.baseline=false"]
    assert run_cli(["run", "--quiet", "--out", str(tmp_path / "d"), *d_args]) == 0
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["baseline"] is None
    assert read_jsonl(tmp_path / "d" / "metrics.jsonl")[0]["train_loss"] == a[0]["train_loss"]
    c_args = [*args, "--set", "seed=1"]
    assert run_cli(["run", "--quiet", "--out", str(tmp_path / "c"), *c_args]) == 0
    c = read_jsonl(tmp_path / "c" / "metrics.jsonl")
    assert c[0]["train_loss"] != a[0]["train_loss"]


@pytest.mark.parametrize(
    "method",
    ["zeropad", "hetlora", "flora", "ffa", "florist", "fedex", "slora+flexlora", "fedavg+zeropad"],
)
def test_every_baseline_runs(method: str, tiny_model: Path, tmp_path: Path) -> None:
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "federation.rounds=2",
        f"method={method}",
    ]
    if method == "hetlora":
        sets.append("method_options={gamma: 0.5, reg_lambda: 0.01}")
    if get_federated_method(method).single_rank:
        sets.append("ranks.types=[4]")
    if method.startswith("slora"):
        sets.append("recipe_options={slora: {sparse_rounds: 1, density: 0.05}}")
    out = tmp_path / method
    assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 0
    rounds = read_jsonl(out / "metrics.jsonl")
    assert len(rounds) == 2 and rounds[-1]["eval"]["unseen"]["loss"] > 0
    assert (out / "adapters" / "global" / "adapter_model.safetensors").is_file()


def test_ffa_keeps_every_class_on_the_shared_frozen_A(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each class's A is the leading rows of ffa_shared_A, even for a class whose rank is
    above every client sampled in a round (rows regenerated from the seed, never zero)."""
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "method=ffa",
        "federation.clients_per_round=1",  # one client a round: some classes go unsampled
    ]
    out = tmp_path / "ffa"
    with caplog.at_level("WARNING"):
        assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 0
    assert not [r for r in caplog.records if "zero rows added" in r.getMessage()]
    seed = get_federated_method("ffa").resolve_options({}, {}, 0)[0]["seed"]  # default for seed 0
    sampled = {cls for r in read_jsonl(out / "metrics.jsonl") for cls in r["ranks"].values()}
    assert sampled != {"rank-2", "rank-4", "rank-8"}  # the case this test is about
    for rank in (2, 4, 8):
        factors = read_adapter(out / "adapters" / f"rank-{rank}").factors
        assert len(factors) == 2 * 7  # 2 layers x 7 projections
        for name, f in factors.items():
            expected = ffa_shared_A(f.A.shape[1], rank, seed, name)
            assert torch.equal(f.A, expected), (rank, name)


def test_fedit_refuses_mixed_ranks(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [*quick_overrides(tiny_model, tmp_path / "cache"), "method=fedit"]
    out = tmp_path / "fedit"
    assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fedit" in err[0] and "single rank type" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.rnds=3", "unknown config key federation.rnds"),
        ("federation.rounds=many", "federation.rounds: expected an int"),
        ("ranks.distribution=skewed", "unknown ranks.distribution"),
        ("method=fedprox", "unknown"),
        ("data.kind=flexlora-ni", "data.path is required"),
    ],
)
def test_bad_config_is_one_line_exit_2(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad"
    assert run_cli(["run", "--quiet", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_compare_writes_table_two(tiny_model: Path, tmp_path: Path) -> None:
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "federation.rounds=1",
        "eval.seen=false",
    ]
    out = tmp_path / "cmp"
    code = run_cli(
        [
            "compare",
            "--quiet",
            "--out",
            str(out),
            "--methods",
            "fedit-min,flexlora",
            "--distributions",
            "uniform,heavy-tail-light",
            "--seeds",
            "2",
            *set_args(sets),
        ]
    )
    assert code == 0
    text = (out / "results.md").read_text()
    assert "| fedit-min |" in text and "| flexlora |" in text and "heavy-tail-light" in text
    assert "| base model |" in text  # the reference row: the model before any round
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("metric,method,uniform mean")
    assert len(rows) == 1 + 2 * 3  # header + 2 metrics × (base model + 2 methods)
    # the % improvement and paired-test tables, in results.md and results_stats.csv
    assert "| flexlora vs fedit-min |" in text and "paired permutation test" in text
    stats_rows = (out / "results_stats.csv").read_text().splitlines()
    assert len(stats_rows) == 1 + 2 * 2  # header + 2 metrics × 2 columns (flexlora vs fedit-min)
    # fedit-min runs once per seed and fills both columns with the same figures
    results = json.loads((out / "results.json").read_text())["runs"]
    assert results["fedit-min"]["uniform"] == results["fedit-min"]["heavy-tail-light"]
    assert len(results["flexlora"]["uniform"]) == 2
    assert (out / "results.png").stat().st_size > 1000


def test_every_preset_loads_and_runs_one_round(tiny_model: Path, tmp_path: Path) -> None:
    """configs/**.yaml: each opens with its command, validates, runs a round on the tiny model."""
    from fixtures.data_fixtures import make_ni_folder

    ni = make_ni_folder(tmp_path / "ni", {str(i): (6, 2, 2) for i in range(12)})
    dolly = tmp_path / "dolly.jsonl"
    dolly.write_text(
        "".join(
            json.dumps(
                {"instruction": f"Say {w} {i}.", "context": "", "response": w, "category": c}
            )
            + "\n"
            for i in range(60)
            for w, c in [(("alpha", "open_qa"), ("beta", "brainstorming"))[i % 2]]
        )
    )
    presets = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(presets) >= 4
    for preset in presets:
        first = preset.read_text().splitlines()[0]
        assert first.startswith("# flexlora "), f"{preset} does not open with its command"
        kind = yaml.safe_load(preset.read_text())["data"]["kind"]
        data_path = {"flexlora-ni": ni, "dolly": dolly}.get(kind)
        sets = [
            f"model.path={tiny_model}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "federation.rounds=1",
            "federation.clients_per_round=2",
            "federation.local_steps=1",
            "federation.batch_size=2",
            "eval.max_new_tokens=2",
            "eval.max_examples_per_client=1",
            "eval.every=1",
            "data.max_length=128",
        ]
        if kind == "synthetic":
            # the default world suite, small: every preset on it runs the default data path
            sets.append(
                "data.synthetic={entities: 6, entities_per_client: 3, train_per_client: 4, "
                "eval_per_client: 1, test_per_client: 2}"
            )
        if data_path is not None:
            sets.append(f"data.path={data_path}")
        if kind == "dolly":
            sets += ["data.num_clients=4", "data.min_client_size=5"]
        if "types" in yaml.safe_load(preset.read_text()).get("ranks", {}):
            sets.append("ranks.types=[2, 4]")
        out = tmp_path / preset.stem
        assert (
            run_cli(
                [
                    "run",
                    str(preset),
                    "--quiet",
                    "--out",
                    str(out),
                    *set_args(sets),
                ]
            )
            == 0
        ), preset
        assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 1


@pytest.mark.skipif(
    not (ASSETS / "models" / "stories260K").is_dir(),
    reason=f"{ASSETS} not found: real-model test skipped",
)
def test_two_rounds_on_real_ni_with_stories260k(tmp_path: Path) -> None:
    out = tmp_path / "ni"
    sets = [
        f"model.path={ASSETS / 'models' / 'stories260K'}",
        f"data.path={ASSETS / 'ni-flexlora' / 'en-64-clients-100-20-20'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "federation.rounds=2",
        "federation.clients_per_round=2",
        "federation.local_steps=2",
        "federation.batch_size=2",
        "eval.max_new_tokens=4",
        "eval.max_examples_per_client=1",
        "data.unseen.count=2",
    ]
    preset = REPO / "configs" / "ni-64-stories260k.yaml"
    assert (
        run_cli(
            [
                "run",
                str(preset),
                "--quiet",
                "--out",
                str(out),
                *set_args(sets),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["data"]["unseen_clients"] == 2
    assert summary["final"]["unseen_loss"] > 0 and summary["baseline"]["unseen_loss"] > 0


class CrashAtRound(RunObserver):
    """Stands in for a crash: raises as round `round_index` starts."""

    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def round_started(self, round_index: int, clients: list[str]) -> None:
        if round_index == self.round_index:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["flexlora", "hetlora", "flora"])
def test_resume_after_a_crash_ends_as_an_uninterrupted_run(
    method: str, tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: hetlora carries per-client pruned ranks, flora merges into the base weights
    sets = [*quick_overrides(tiny_model, tmp_path / "cache"), f"method={method}"]
    if method == "hetlora":
        sets.append("method_options={gamma: 0.5, reg_lambda: 0.01}")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_cli(["run", "--quiet", "--out", str(straight), *set_args(sets)]) == 0
    cfg = load_config(None, sets)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, crashed, CrashAtRound(3))
    assert len(read_jsonl(crashed / "metrics.jsonl")) == 2
    assert not (crashed / "summary.json").exists()
    # a line written after the checkpoint (a crash between the two) must not survive
    with (crashed / "metrics.jsonl").open("a") as f:
        f.write('{"round": 3, "partial": true}\n')
    # Execute
    assert run_cli(["run", "--quiet", "--resume", str(crashed)]) == 0
    # Assert: the same records, adapters and final metrics as the uninterrupted run
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(crashed / "metrics.jsonl")
    assert [r["round"] for r in b] == [1, 2, 3]
    assert without_timings(a) == without_timings(b)
    for name in ("global", *(["rank-2", "rank-4", "rank-8"] if method != "flora" else [])):
        tensors_a = load_file(straight / "adapters" / name / "adapter_model.safetensors")
        tensors_b = load_file(crashed / "adapters" / name / "adapter_model.safetensors")
        assert tensors_a.keys() == tensors_b.keys()
        assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((crashed / "summary.json").read_text())
    assert summary_b["rounds_completed"] == 3
    assert summary_a["final"] == summary_b["final"]
    assert summary_a["baseline"] == summary_b["baseline"] and summary_b["baseline"]
    assert without_timings(summary_a["history"]) == without_timings(summary_b["history"])


def test_resume_refuses_bad_requests(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [*quick_overrides(tiny_model, tmp_path / "cache"), "federation.rounds=1"]
    done = tmp_path / "done"
    assert run_cli(["run", "--quiet", "--out", str(done), *set_args(sets)]) == 0
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cases = [
        (["--resume", str(done)], "already completed its 1 rounds"),
        (
            ["--resume", str(done), "--set", "federation.rounds=2"],
            "give no CONFIG, --set, --out or --engine",
        ),
        (["--resume", str(empty)], "has no checkpoint.pt"),
        (["--resume", str(tmp_path / "missing")], "is not a directory"),
        (["--resume", str(damaged)], "is unreadable"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert run_cli(["run", "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    # every round done but the results never written (a crash in between): resume writes them
    final = json.loads((done / "summary.json").read_text())["final"]
    (done / "summary.json").unlink()
    assert run_cli(["run", "--quiet", "--resume", str(done)]) == 0
    assert json.loads((done / "summary.json").read_text())["final"] == final


def compare_args(out: Path, sets: list[str]) -> list[str]:
    return [
        "compare", "--quiet", "--out", str(out), "--methods", "fedit-min,flexlora",
        "--distributions", "uniform,heavy-tail-light", *set_args(sets),
    ]  # fmt: skip


def test_compare_resume_finishes_an_interrupted_grid(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: cells fedit-min, flexlora/uniform, flexlora/heavy-tail-light (3 rounds each)
    sets = quick_overrides(tiny_model, tmp_path / "cache")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_cli(compare_args(straight, sets)) == 0

    class CrashInSecondCell(RunObserver):
        cells = 0

        def __init__(self) -> None:
            type(self).cells += 1

        def round_started(self, round_index: int, clients: list[str]) -> None:
            if type(self).cells == 2 and round_index == 2:
                raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("flexlora.simulation.RunObserver", CrashInSecondCell)
        assert run_cli(compare_args(crashed, sets)) == 130  # the CLI's exit on Ctrl-C
    cells = crashed / "cells"
    assert (cells / "fedit-min" / "all" / "seed0" / "summary.json").is_file()
    assert (cells / "flexlora" / "uniform" / "seed0" / "checkpoint.pt").is_file()
    assert not (cells / "flexlora" / "heavy-tail-light").exists()
    # Execute
    assert run_cli(["compare", "--quiet", "--resume", str(crashed)]) == 0
    # Assert: the same table as the uninterrupted comparison
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((crashed / "results.json").read_text())
    assert without_timings(a) == without_timings(b)
    assert (straight / "results.csv").read_text() == (crashed / "results.csv").read_text()


def test_compare_resume_and_bad_grids_are_refused(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_data = ["data.kind=jsonl", f"data.path={tmp_path / 'missing.jsonl'}"]
    cases = [
        (["compare", "--resume", str(empty)], "has no compare.json"),
        (["compare", "--resume", str(empty), "--seeds", "2"], "give no CONFIG"),
        (compare_args(tmp_path / "new", bad_data), "missing.jsonl"),
    ]
    for args, message in cases:
        assert run_cli(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "new").exists()  # a failed start leaves nothing behind


def test_the_cpu_paper_grid_runs_and_prints_its_three_tables(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs/paper-grid-cpu.yaml, one round and one seed: every recipe at the smallest
    rank and "+ FlexLoRA", HETLoRA; the mean table, the % improvement of each "+ FlexLoRA"
    over its recipe, and the paired test."""
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "federation.rounds=1",
        "eval.seen=false",
        "compare.seeds=1",
    ]
    out = tmp_path / "grid"
    preset = REPO / "configs" / "paper-grid-cpu.yaml"
    args = ["compare", "--quiet", "--out", str(out), "--distributions", "uniform", str(preset)]
    assert run_cli([*args, *set_args(sets)]) == 0
    text = (out / "results.md").read_text()
    for row in ("fedavg-min", "fedavg+flexlora", "fedit-min", "flexlora", "slora-min"):
        assert f"| {row} |" in text, row
    assert "| slora+flexlora |" in text and "| hetlora |" in text
    for pair in ("fedavg+flexlora vs fedavg-min", "flexlora vs fedit-min"):
        assert f"| {pair} |" in text, pair
    assert "| slora+flexlora vs slora-min |" in text
    assert "paired permutation test" in text
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs["slora+flexlora"]["uniform"][0]["unseen_loss"] > 0


def test_more_clients_a_round_than_the_data_has_is_refused(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [*quick_overrides(tiny_model, tmp_path / "cache"), "federation.clients_per_round=50"]
    out = tmp_path / "run"
    assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clients_per_round=50 but the data has only 4 seen" in err[0]


def test_a_run_without_unseen_clients_says_why_its_headline_is_missing(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "federation.rounds=1",
        "data.unseen={count: 0}",
    ]
    assert run_cli(["run", "--out", str(tmp_path / "run"), *set_args(sets)]) == 0
    assert "No unseen clients: this data holds out none" in capsys.readouterr().out


def test_a_diverging_run_ends_with_one_line_and_a_resumable_folder(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 9's first finding: lr=1e30 used to exit 0 with adapters near 4e30."""
    sets = [
        *quick_overrides(tiny_model, tmp_path / "cache"),
        "federation.lr=1.0e+30",
        "federation.local_steps=1",
    ]
    out = tmp_path / "run"
    assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lower federation.lr" in err[0], err
    assert "round 1" in err[0]
    assert (out / "checkpoint.pt").is_file() and not (out / "adapters").exists()


def test_a_truncated_model_file_is_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    sets = [*quick_overrides(broken, tmp_path / "cache")]
    out = tmp_path / "run"
    assert run_cli(["run", "--quiet", "--out", str(out), *set_args(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load model" in err[0], err
