"""SLoRA's sparse stage: the shared mask, the weighted average, the dense update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexlora.errors import FlexLoraError
from flexlora.slora import average_sparse, dense_update, sparse_mask


def test_the_mask_is_shared_seeded_and_of_the_asked_density() -> None:
    a = sparse_mask((40, 30), 0.1, 7, "l.0.q_proj")
    assert a.shape == (120,) and len(set(a.tolist())) == 120  # round(0.1 · 1200), distinct
    assert bool((a[1:] > a[:-1]).all()) and int(a.min()) >= 0 and int(a.max()) < 1200
    assert torch.equal(a, sparse_mask((40, 30), 0.1, 7, "l.0.q_proj"))  # every client's
    assert not torch.equal(a, sparse_mask((40, 30), 0.1, 7, "l.0.k_proj"))  # per module
    assert not torch.equal(a, sparse_mask((40, 30), 0.1, 8, "l.0.q_proj"))  # per seed
    assert sparse_mask((4, 4), 1e-6, 0, "m").shape == (1,)  # never empty
    with pytest.raises(FlexLoraError, match="density must be in"):
        sparse_mask((4, 4), 0.0, 0, "m")


def test_the_average_weights_clients_by_their_data() -> None:
    gen = np.random.default_rng(0)
    values = [gen.standard_normal(5) for _ in range(3)]
    weights = [10.0, 30.0, 60.0]
    got = average_sparse([{"m": torch.tensor(v, dtype=torch.float32)} for v in values], weights)
    expected = sum(
        w / 100.0 * v.astype(np.float32).astype(np.float64)
        for w, v in zip(weights, values, strict=True)
    )
    np.testing.assert_allclose(got["m"].numpy(), expected, rtol=1e-6)
    with pytest.raises(FlexLoraError, match="sum to 0"):
        average_sparse([{"m": torch.ones(2)}], [0.0])


def test_the_dense_update_holds_the_values_at_the_mask_only() -> None:
    idx = sparse_mask((6, 5), 0.2, 1, "m")
    values = torch.arange(1, len(idx) + 1, dtype=torch.float32)
    dense = dense_update(values, idx, (6, 5))
    assert dense.shape == (6, 5)
    assert torch.equal(dense.view(-1)[idx], values)
    assert int((dense != 0).sum()) == len(idx)
