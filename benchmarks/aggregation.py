r"""FlexLoRA aggregation against the authors' way, timed in one run.

The authors' way (the reference), per module: each client's dense s_k·B_k @ A_k summed
with the data weights, a full torch.linalg.svd on the CPU, then U_r Σ_r / s_j, V_rᵀ for
every client j. Ours: `flexlora.aggregation.get_aggregation("flexlora")` on the same factors.

Cases:
  a  LLaMA-7B attention: q and v of `--layers` layers, 4096 × 4096, 10 clients of ranks
     spread over 4–64 (R = Σ r_k < 4096: our exact factored path). The reference is timed
     on `--ref-modules` modules and extrapolated to all of them. Accuracy: every client's
     effective update against the exact truncation computed in float64 (factored QR-core
     SVD in float64, itself checked against a float64 dense SVD with --verify-dense).
  b  The paper's setting: DataJuicer-1.3B shapes (hidden 2048, intermediate 5504; q,k,v,o
     2048 × 2048, gate/up 5504 × 2048, down 2048 × 5504), `--b-layers` layers, 80 clients
     drawn from the heavy-tail-light rank types, so R >= min(out, in): dW is formed. Ours
     with `--svd` (default auto: exact, from the float64 Gram matrix) and with svd=fast
     (randomised); every target's truncation against the float64 truncation of a float64
     dW, max error per target rank, the captured energy of the top r_max against the
     optimum (meaningful even at a tie) and any ties at a target rank. `--threads 1`
     times ours and the reference single-threaded; `--b-modules` times a subset.

Peak memory: each approach re-runs in a subprocess that builds the clients, resets its
peak RSS (/proc/self/clear_refs), runs the approach once and reports peak RSS (VmHWM)
minus RSS before: the approach's own working memory, the clients' factors excluded. The
measurement runs both on the same `--ref-modules` largest modules. (ru_maxrss would carry
the parent's peak into the child across fork + exec.) On CUDA,
torch.cuda.max_memory_allocated for ours.

What docs/benchmarks/aggregation.md reports (about 10 + 8 minutes on a 2-core CPU):
    .venv/bin/python benchmarks/aggregation.py --case a --layers 32 --ref-modules 1 --repeat 3
    .venv/bin/python benchmarks/aggregation.py --case b --threads 1 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from flexlora.aggregation import AggregationResult, TargetSpec, get_aggregation
from flexlora.lora import LoraFactors, lora_scaling
from flexlora.svd import factored_svd

LLAMA_7B_ATTENTION = {"q_proj": (4096, 4096), "v_proj": (4096, 4096)}
DJ_1B3_LAYER = {
    "q_proj": (2048, 2048),
    "k_proj": (2048, 2048),
    "v_proj": (2048, 2048),
    "o_proj": (2048, 2048),
    "gate_proj": (5504, 2048),
    "up_proj": (5504, 2048),
    "down_proj": (2048, 5504),
}
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
# The paper's rank types (attention, mlp) and the heavy-tail-light distribution over them.
RANK_TYPES = [(8, 8), (30, 30), (30, 200), (200, 200)]
HEAVY_TAIL_LIGHT = [0.80, 0.05, 0.05, 0.10]
ALPHA = 16.0

Clients = list[dict[str, LoraFactors]]
# Hashable keys: Mapping is invariant in its key type, so dict[int, ...] would not match.
Targets = dict[Hashable, TargetSpec]


@dataclass
class Case:
    """One benchmark problem: the clients' factors, data sizes and per-client targets."""

    name: str
    shapes: dict[str, tuple[int, int]]
    clients: Clients
    weights: list[float]
    targets: Targets


# --- synthetic clients ----------------------------------------------------------------


def client_factors(
    shape: tuple[int, int],
    ranks: list[int],
    spectrum: str,
    g: torch.Generator,
    device: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Factors (B (out, r), A (r, in)) for every client on one module.

    "decaying": clients share a task subspace with singular values 1/(1+i), each seen
    through its own random rotation and with 50 % client-specific noise, so dW has a
    decaying spectrum with a tail (LoRA-like). "gaussian": iid Gaussian factors, a flat
    spectrum with tiny gaps (the worst case for any truncation).
    """
    out, inn = shape
    r_max = max(ranks)
    if spectrum == "decaying":
        U0 = torch.linalg.qr(torch.randn(out, r_max, generator=g))[0]  # (out, r_max)
        V0 = torch.linalg.qr(torch.randn(inn, r_max, generator=g))[0]  # (in, r_max)
        sigma = 1.0 / torch.arange(1, r_max + 1, dtype=torch.float32)
    pairs = []
    for r in ranks:
        if spectrum == "decaying":
            mix = torch.linalg.qr(torch.randn(r, r, generator=g))[0]  # (r, r) rotation
            noise_b = 0.5 * torch.randn(out, r, generator=g) / math.sqrt(out)
            noise_a = 0.5 * torch.randn(inn, r, generator=g) / math.sqrt(inn)
            B = ((U0[:, :r] + noise_b) * sigma[:r]) @ mix  # (out, r) @ (r, r)
            A = mix.T @ (V0[:, :r] + noise_a).T  # (r, r) @ (r, in)
        else:
            B = torch.randn(out, r, generator=g) / math.sqrt(out)
            A = torch.randn(r, inn, generator=g) / math.sqrt(inn)
        pairs.append((B.to(device), A.contiguous().to(device)))
    return pairs


def build_case(
    name: str,
    shapes: dict[str, tuple[int, int]],
    ranks_of: Callable[[str], list[int]],
    n_clients: int,
    spectrum: str,
    seed: int,
    device: str,
) -> Case:
    """Clients with per-module ranks, alpha 16 (scaling alpha / r), data sizes 100–1000."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    clients: Clients = [{} for _ in range(n_clients)]
    for module, shape in shapes.items():
        ranks = ranks_of(module)
        for k, (B, A) in enumerate(client_factors(shape, ranks, spectrum, g, device)):
            clients[k][module] = LoraFactors(B, A, lora_scaling(ALPHA, ranks[k]))
    weights = [float(n) for n in rng.integers(100, 1001, size=n_clients)]
    targets: Targets = {
        k: TargetSpec(
            {m: f.rank for m, f in client.items()},
            {m: f.scaling for m, f in client.items()},
        )
        for k, client in enumerate(clients)
    }
    return Case(name, shapes, clients, weights, targets)


def case_a(layers: int, spectrum: str, seed: int, device: str) -> Case:
    ranks = [int(r) for r in np.rint(np.linspace(4, 64, 10))]
    shapes = {
        f"layers.{i}.self_attn.{m}": s for i in range(layers) for m, s in LLAMA_7B_ATTENTION.items()
    }
    return build_case("a", shapes, lambda _m: ranks, len(ranks), spectrum, seed, device)


def case_b(layers: int, n_clients: int, spectrum: str, seed: int, device: str) -> Case:
    rng = np.random.default_rng(seed + 1)
    types = rng.choice(len(RANK_TYPES), size=n_clients, p=HEAVY_TAIL_LIGHT)
    shapes = {f"layers.{i}.{m}": s for i in range(layers) for m, s in DJ_1B3_LAYER.items()}

    def ranks_of(module: str) -> list[int]:
        group = 0 if module.rsplit(".", 1)[-1] in ATTENTION else 1
        return [RANK_TYPES[t][group] for t in types]

    return build_case("b", shapes, ranks_of, n_clients, spectrum, seed, device)


# --- the two approaches ------------------------------------------------------------------


def reference(case: Case, modules: list[str]) -> dict[str, tuple[torch.Tensor, ...]]:
    """The authors' way on the CPU: dense weighted sum, full SVD, truncation per client."""
    total = sum(case.weights)
    results: dict[str, tuple[torch.Tensor, ...]] = {}
    for module in modules:
        dW = None
        for client, n in zip(case.clients, case.weights, strict=True):
            f = client[module]
            term = (n / total) * f.scaling * (f.B.cpu() @ f.A.cpu())  # (out, r) @ (r, in)
            dW = term if dW is None else dW + term
        assert dW is not None
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        for spec in case.targets.values():
            r, s = spec.ranks[module], spec.scalings[module]
            _ = (U[:, :r] * (S[:r] / s), Vh[:r])  # what that client receives
        results[module] = (U, S, Vh)
    return results


def ours(case: Case, modules: list[str], options: dict[str, object]) -> AggregationResult:
    clients = [{m: c[m] for m in modules} for c in case.clients]
    targets: Targets = {
        k: TargetSpec({m: t.ranks[m] for m in modules}, {m: t.scalings[m] for m in modules})
        for k, t in case.targets.items()
    }
    result = get_aggregation("flexlora").aggregate(clients, case.weights, targets, options)
    if clients[0][modules[0]].B.is_cuda:
        torch.cuda.synchronize()
    return result


def path_of(result: AggregationResult, module: str) -> str:
    return str(result.diagnostics["svd_mode"][module])


T = TypeVar("T")


def best_time(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """The best wall time of `repeat` >= 1 calls, and the last call's value."""
    best = math.inf
    for _ in range(repeat - 1):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    value = fn()
    return min(best, time.perf_counter() - start), value


# --- accuracy ---------------------------------------------------------------------------


def exact_truncations_f64(case: Case, module: str, ranks: set[int]) -> dict[int, torch.Tensor]:
    """T_r(dW) in float64 for each rank, via the exact factored SVD in float64."""
    total = sum(case.weights)
    Bs = [
        (n / total) * c[module].scaling * c[module].B.double().cpu()
        for c, n in zip(case.clients, case.weights, strict=True)
    ]
    Bc = torch.cat(Bs, dim=1)  # (out, R)
    Ac = torch.cat([c[module].A.double().cpu() for c in case.clients])  # (R, in)
    U, S, Vh = factored_svd(Bc, Ac)
    return {r: (U[:, :r] * S[:r]) @ Vh[:r] for r in ranks}


def relative_error(f: LoraFactors, exact: torch.Tensor) -> float:
    got = f.scaling * (f.B.double().cpu() @ f.A.double().cpu())  # (out, r) @ (r, in)
    return float(torch.linalg.matrix_norm(got - exact) / torch.linalg.matrix_norm(exact))


def max_error_vs(
    case: Case,
    result: AggregationResult,
    modules: list[str],
    exact: Callable[[str], dict[int, torch.Tensor]],
) -> float:
    worst = 0.0
    for module in modules:
        truncations = exact(module)
        for key, spec in case.targets.items():
            assert result.client_factors is not None  # flexlora always returns them
            f = result.client_factors[key][module]
            worst = max(worst, relative_error(f, truncations[spec.ranks[module]]))
    return worst


def reference_truncations(
    ref: dict[str, tuple[torch.Tensor, ...]], module: str, ranks: set[int]
) -> dict[int, torch.Tensor]:
    U, S, Vh = ref[module]
    return {r: ((U[:, :r] * S[:r]) @ Vh[:r]).double() for r in ranks}


# --- memory (subprocess per approach) -------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process image. Unlike ru_maxrss it does not inherit the
    parent's peak across fork + exec, and clear_refs can reset it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_child(args: argparse.Namespace) -> None:
    """Run one approach once and print {"peak_bytes": ...} as JSON (internal)."""
    case = make_case(args, args.child_case)
    modules = list(case.shapes)
    # Both approaches on the same `--ref-modules` largest modules (which bound the peak);
    # the peak includes what each returns.
    by_size = sorted(modules, key=lambda m: -case.shapes[m][0] * case.shapes[m][1])
    modules = by_size[: args.ref_modules]
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes()
    if args.child_approach == "reference":
        reference(case, modules)
    else:
        ours(case, modules, {"svd": args.svd, "dtype": args.dtype})
    if args.device == "cuda" and args.child_approach != "reference":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss_bytes() - base
    print(json.dumps({"peak_bytes": peak, "modules": len(modules)}))


def measure_in_subprocess(
    args: argparse.Namespace, case_name: str, approach: str
) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child-case", case_name, "--child-approach", approach,
        "--layers", str(args.layers), "--b-layers", str(args.b_layers),
        "--b-clients", str(args.b_clients), "--ref-modules", str(args.ref_modules),
        "--spectrum", args.spectrum, "--seed", str(args.seed), "--device", args.device,
        "--svd", args.svd, "--dtype", args.dtype,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_case(args: argparse.Namespace, name: str) -> Case:
    if name == "a":
        return case_a(args.layers, args.spectrum, args.seed, args.device)
    return case_b(args.b_layers, args.b_clients, args.spectrum, args.seed, args.device)


# --- the runs ----------------------------------------------------------------------------


def relative_difference(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(got - exact) / torch.linalg.matrix_norm(exact))


def run_case_a(args: argparse.Namespace) -> None:
    case = make_case(args, "a")
    modules = list(case.shapes)
    ref_modules = modules[: args.ref_modules]
    client_ranks = [c[modules[0]].rank for c in case.clients]
    print(
        f"\n(a) LLaMA-7B q,v of {args.layers} layers: {len(modules)} modules 4096x4096, "
        f"10 clients, ranks {client_ranks}, spectrum={args.spectrum}"
    )
    ours(case, modules[:1], {"dtype": args.dtype})  # warm-up
    t_ours, res = best_time(lambda: ours(case, modules, {"dtype": args.dtype}), args.repeat)
    t_ours64, res64 = best_time(lambda: ours(case, modules, {"dtype": "float64"}), 1)
    t_ref, ref = best_time(lambda: reference(case, ref_modules), 1)
    t_ref_all = t_ref * len(modules) / len(ref_modules)
    ranks = set(client_ranks)
    f64 = {m: exact_truncations_f64(case, m, ranks) for m in ref_modules}
    err_ref = max(
        relative_difference(reference_truncations(ref, m, ranks)[r], f64[m][r])
        for m in ref_modules
        for r in ranks
    )
    if args.verify_dense:
        verify_against_dense_f64(case, ref_modules[0], f64[ref_modules[0]])
    rows = [
        ("reference (dense sum + full SVD, CPU fp32)", t_ref_all, err_ref),
        (
            f"flexlora {args.dtype} ({path_of(res, modules[0])})",
            t_ours,
            max_error_vs(case, res, ref_modules, f64.__getitem__),
        ),
        (
            "flexlora float64 (factored)",
            t_ours64,
            max_error_vs(case, res64, ref_modules, f64.__getitem__),
        ),
    ]
    print(
        f"    reference timed on {len(ref_modules)} of {len(modules)} modules ({t_ref:.2f} s), "
        f"extrapolated x{len(modules) / len(ref_modules):g}; errors: max over every client "
        f"on those {len(ref_modules)} modules vs the float64 exact truncation"
    )
    print_table(rows, t_ref_all)
    report_memory(args, "a")


def verify_against_dense_f64(case: Case, module: str, f64: dict[int, torch.Tensor]) -> None:
    """Check the float64 factored reference against a float64 dense full SVD."""
    total = sum(case.weights)
    dW = torch.zeros(case.shapes[module], dtype=torch.float64)
    for c, n in zip(case.clients, case.weights, strict=True):
        f = c[module]
        dW += (n / total) * f.scaling * (f.B.double().cpu() @ f.A.double().cpu())
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    check = max(relative_difference((U[:, :r] * S[:r]) @ Vh[:r], t) for r, t in f64.items())
    print(f"    float64 factored vs float64 dense SVD on {module}: max rel. difference {check:.2e}")


def dense_f64(case: Case, module: str) -> torch.Tensor:
    """dW = Σ p_k s_k B_k A_k formed in float64 on the CPU."""
    total = sum(case.weights)
    dW = torch.zeros(case.shapes[module], dtype=torch.float64)
    for c, n in zip(case.clients, case.weights, strict=True):
        f = c[module]
        product = f.B.double().cpu() @ f.A.double().cpu()  # (out, r) @ (r, in) -> (out, in)
        dW += (n / total) * f.scaling * product
    return dW


def run_case_b(args: argparse.Namespace) -> None:
    case = make_case(args, "b")
    modules = list(case.shapes)
    if args.b_modules:
        wanted = set(args.b_modules.split(","))
        modules = [m for m in modules if m.rsplit(".", 1)[-1] in wanted]
    attention = sum(c[modules[0]].rank for c in case.clients)
    mlp = max(sum(c[m].rank for c in case.clients) for m in modules)
    print(
        f"\n(b) 1.3B shapes, {args.b_layers} layer(s), {len(modules)} of {len(case.shapes)} "
        f"modules, {args.b_clients} clients (heavy-tail-light): R = {attention} (first module), "
        f"{mlp} (largest); spectrum={args.spectrum}; {torch.get_num_threads()} thread(s)"
    )
    exact_options = {"dtype": args.dtype, "svd": args.svd}
    fast_options = {"dtype": args.dtype, "svd": "fast"}
    # One untimed call of each on the first module: imports (scipy's LAPACK loads on
    # first use, ~0.2 s) and first-touch memory are paid once per process, not per round.
    ours(case, modules[:1], exact_options)
    ours(case, modules[:1], fast_options)
    reference(case, modules[:1])
    t_exact, exact = best_time(lambda: ours(case, modules, exact_options), args.repeat)
    t_fast, fast = best_time(lambda: ours(case, modules, fast_options), 1)
    t_ref, ref = best_time(lambda: reference(case, modules), 1)
    # Accuracy, untimed (all threads): every target against the float64 truncation of a
    # float64 dW, by a float64 full SVD.
    torch.set_num_threads(args.check_threads)
    ranks = sorted({f.rank for c in case.clients for f in c.values()})
    worst: dict[str, dict[int, float]] = {"reference": {}, "exact": {}, "fast": {}}
    deficit = {"exact": 0.0, "fast": 0.0}
    ties = []
    for module in modules:
        dW = dense_f64(case, module)
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        energy = float(S.square().sum())
        r_max = max(ranks)
        optimum = float(S[:r_max].square().sum()) / energy
        for name, result in (("exact", exact), ("fast", fast)):
            captured = result.diagnostics["svd_captured_energy"][module]
            deficit[name] = max(deficit[name], optimum - captured)
        for r in ranks:
            if float(S[r - 1] - S[r]) <= 1e-12 * float(S[0]):
                ties.append((module, r))
        truncations = {r: (U[:, :r] * S[:r]) @ Vh[:r] for r in ranks}  # (out, r) @ (r, in)
        ref_U, ref_S, ref_Vh = ref[module]
        for key, spec in case.targets.items():
            r = spec.ranks[module]
            exact_r = truncations[r]
            for name, result in (("exact", exact), ("fast", fast)):
                assert result.client_factors is not None
                error = relative_error(result.client_factors[key][module], exact_r)
                worst[name][r] = max(worst[name].get(r, 0.0), error)
            ref_r = (ref_U[:, :r] * ref_S[:r]).double() @ ref_Vh[:r].double()
            worst["reference"][r] = max(
                worst["reference"].get(r, 0.0), relative_difference(ref_r, exact_r)
            )
    rows = [
        ("reference (dense sum + full SVD, CPU fp32)", t_ref, max(worst["reference"].values())),
        (
            f"flexlora {args.dtype} svd={args.svd} ({path_of(exact, modules[0])})",
            t_exact,
            max(worst["exact"].values()),
        ),
        (
            f"flexlora {args.dtype} svd=fast ({path_of(fast, modules[0])})",
            t_fast,
            max(worst["fast"].values()),
        ),
    ]
    print(
        "    errors: max over modules and targets of ||s_j B_j A_j - T_r(dW)||_F / ||T_r(dW)||_F"
        " against the float64 truncation of a float64 dW (float64 full SVD)"
    )
    print_table(rows, t_ref)
    for name in ("reference", "exact", "fast"):
        per_rank = ", ".join(f"r={r}: {e:.2e}" for r, e in sorted(worst[name].items()))
        print(f"    max rel. error by target rank, {name}: {per_rank}")
    residual = max(fast.diagnostics["svd_residual"].values(), default=0.0)
    print(
        f"    captured energy of the top {max(ranks)} vs the optimum (share of ||dW||_F^2), "
        f"worst module: exact short by {deficit['exact']:.2e}, fast short by "
        f"{deficit['fast']:.2e}; fast residual ||dW V - U S||_F / ||S||_F up to {residual:.2e}"
    )
    print(f"    ties (sigma_r = sigma_r+1 to 1e-12) at a target rank: {ties or 'none'}")
    torch.set_num_threads(args.threads or args.check_threads)
    report_memory(args, "b")


def print_table(rows: list[tuple[str, float, float]], t_ref: float) -> None:
    print(f"    {'approach':<48} {'time (s)':>10} {'speed-up':>9} {'max rel. error':>15}")
    for name, seconds, error in rows:
        print(f"    {name:<48} {seconds:>10.3f} {t_ref / seconds:>8.1f}x {error:>15.2e}")


def report_memory(args: argparse.Namespace, case_name: str) -> None:
    if args.no_memory:
        return
    mine = measure_in_subprocess(args, case_name, "ours")
    theirs = measure_in_subprocess(args, case_name, "reference")
    where = "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS - RSS before"
    print(
        f"    peak memory ({where}): flexlora {mine['peak_bytes'] / 2**20:.0f} MiB, "
        f"reference {theirs['peak_bytes'] / 2**20:.0f} MiB (CPU), "
        f"each on the {mine['modules']} largest module(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", nargs="+", choices=["a", "b"], default=["a", "b"])
    parser.add_argument("--layers", type=int, default=32, help="case a: layers (2 modules each)")
    parser.add_argument(
        "--ref-modules", type=int, default=2, help="case a: modules the reference is timed on"
    )
    parser.add_argument("--b-layers", type=int, default=1, help="case b: layers (7 modules each)")
    parser.add_argument("--b-clients", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs of ours")
    parser.add_argument("--spectrum", choices=["decaying", "gaussian"], default="decaying")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--svd", choices=["auto", "exact", "fast"], default="auto", help="case b: our mode"
    )
    parser.add_argument(
        "--b-modules",
        default="",
        help="case b: time only these projections, e.g. q_proj,gate_proj (default: all 7)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the timed runs, ours and the reference alike (0: torch's default)",
    )
    parser.add_argument(
        "--verify-dense",
        action="store_true",
        help="case a: check the float64 reference by a dense SVD",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-case", help=argparse.SUPPRESS)
    parser.add_argument("--child-approach", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.check_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_case:
        measure_child(args)
        return
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}, {args.device}")
    if "a" in args.case:
        run_case_a(args)
    if "b" in args.case:
        run_case_b(args)


if __name__ == "__main__":
    main()
