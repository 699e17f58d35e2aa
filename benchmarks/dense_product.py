r"""`flexlora.svd.dense_product` (oneDNN for large float32 CPU products) against torch.matmul.

Forms dW = B @ A at the shapes of the aggregation benchmark's case b (the paper's 1.3B
layer with 80 heavy-tail-light clients: R = 3482 on the MLP modules, 2462 on attention)
and at smaller sizes around `ONEDNN_MIN_MACS`, the threshold below which dense_product
keeps torch.matmul. Per shape: the best of `--repeat` calls of each, in one run and one
thread count, their ratio, and each result's error against a float64 product.

What docs/benchmarks/aggregation.md reports:
    .venv/bin/python benchmarks/dense_product.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from flexlora.svd import ONEDNN_MIN_MACS, dense_product

SHAPES = [  # (out, R, in)
    (5504, 3482, 2048),  # gate/up at case b
    (2048, 3482, 5504),  # down at case b
    (2048, 2462, 2048),  # attention at case b
    (512, 512, 512),
    (256, 256, 256),  # at the threshold
    (128, 128, 128),  # below it: both are torch.matmul
]


def best_seconds(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    B: torch.Tensor,
    A: torch.Tensor,
    repeat: int,
) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(B, A)
        best = min(best, time.perf_counter() - start)
    return best


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(got.double() - exact) / torch.linalg.matrix_norm(exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), oneDNN available: "
        f"{torch.backends.mkldnn.is_available()}, threshold {ONEDNN_MIN_MACS} multiply-adds"
    )
    print(f"    {'out x R x in':<20} {'matmul (s)':>11} {'ours (s)':>10} {'speed-up':>9} "
          f"{'err matmul':>11} {'err ours':>10}")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for out, rank, inn in SHAPES:
        B = torch.randn(out, rank, generator=g)
        A = torch.randn(rank, inn, generator=g)
        repeat = args.repeat if out * rank * inn > 10**9 else 20 * args.repeat
        reference = best_seconds(torch.matmul, B, A, repeat)
        ours = best_seconds(dense_product, B, A, repeat)
        exact = B.double() @ A.double()  # (out, R) @ (R, in), float64
        print(
            f"    {f'{out} x {rank} x {inn}':<20} {reference:>11.4f} {ours:>10.4f} "
            f"{reference / ours:>8.2f}x {relative_error(B @ A, exact):>11.1e} "
            f"{relative_error(dense_product(B, A), exact):>10.1e}"
        )


if __name__ == "__main__":
    main()
