"""The round's pieces on a tiny model: client step, server functions, method hooks."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from engine_fixtures import make_tiny_model
from flexlora.client import ClientReply, ClientTask, local_update
from flexlora.config import load_config
from flexlora.experiment import PreparedExperiment, prepare_experiment
from flexlora.lora import LoraFactors
from flexlora.rounds import (
    RoundFailure,
    ServerState,
    aggregate_round,
    base_change,
    fresh_factors,
    initial_state,
    make_tasks,
    sample_clients,
    total_update,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def prepare(model: Path, cache: Path, *extra: str) -> PreparedExperiment:
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            f"data.cache_dir={cache}",
            "data.synthetic={suite: families, num_clients: 24, train_per_client: 12, "
            "eval_per_client: 2, test_per_client: 2}",
            "data.max_length=128",
            "federation.clients_per_round=3",
            "federation.local_steps=3",
            "federation.batch_size=4",
            "federation.lr=0.01",
            "ranks.types=[2, 4, 8]",
            "lora.dropout=0.1",  # dropout on: its draws must be seeded per client too
            *extra,
        ],
    )
    return prepare_experiment(cfg)


def train_round(
    run: PreparedExperiment, state: ServerState
) -> tuple[list[ClientTask], list[ClientReply]]:
    """(tasks, replies) of one round from `state`: the clients sampled, each trained."""
    tasks = make_tasks(run.server, state, sample_clients(run.server, state))
    return tasks, [local_update(run.engine.client, t) for t in tasks]


def test_a_client_trains_the_same_whatever_the_order(tiny_model: Path, tmp_path: Path) -> None:
    # Prepare: one round's tasks
    run = prepare(tiny_model, tmp_path)
    state = initial_state(run.server)
    tasks = make_tasks(run.server, state, sample_clients(run.server, state))
    assert len({t.seed for t in tasks}) == len(tasks)

    # Execute: the clients in the sampled order, then reversed, then the last one alone
    forward = {t.client_id: local_update(run.engine.client, t) for t in tasks}
    backward = {t.client_id: local_update(run.engine.client, t) for t in reversed(tasks)}
    alone = local_update(run.engine.client, tasks[-1])

    # Assert: bit-identical factors, and training moved them
    for cid, reply in forward.items():
        assert reply.ok and backward[cid].ok
        assert reply.factors is not None and backward[cid].factors is not None
        for name, f in reply.factors.items():
            assert torch.equal(f.B, backward[cid].factors[name].B), (cid, name)
            assert torch.equal(f.A, backward[cid].factors[name].A), (cid, name)
    last = forward[tasks[-1].client_id].factors
    assert alone.factors is not None and last is not None
    assert all(torch.equal(alone.factors[n].B, last[n].B) for n in last)
    assert any(float(f.B.abs().max()) > 0 for f in last.values())  # B left zero: it trained


def test_a_failing_client_is_left_out_recorded_and_the_rest_aggregated(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: three clients' replies; the second's update turned non-finite
    run = prepare(tiny_model, tmp_path)
    server = run.server
    state = initial_state(server)
    tasks, replies = train_round(run, state)
    assert replies[1].factors is not None
    poisoned = {
        n: LoraFactors(f.B * math.nan, f.A, f.scaling) for n, f in replies[1].factors.items()
    }
    replies[1] = dataclasses.replace(replies[1], factors=poisoned)

    # Execute
    new_state, result, record = aggregate_round(server, state, tasks, replies)

    # Assert: the record names the client and why; dW is the aggregate of the other two
    assert record["clients_failed"] == [
        {"client": tasks[1].client_id, "reason": record["clients_failed"][0]["reason"]}
    ]
    assert "not finite" in record["clients_failed"][0]["reason"]
    kept = [replies[0], replies[2]]
    assert set(new_state.class_factors or {}) == {c.key for c in server.classes}
    examples = sum(r.num_examples for r in kept)
    p = [r.num_examples / examples for r in kept]
    for name in server.shapes:
        expected = sum(
            pk * r.factors[name].delta().double()  # type: ignore[index]
            for pk, r in zip(p, kept, strict=True)
        )
        g = result.global_update[name]
        got = g.B.double() @ g.A.double()  # (out, R) @ (R, in) -> (out, in)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    assert new_state.round == 1 and state.round == 0  # the input state is not modified


def test_too_few_usable_replies_end_the_round_with_the_reason(
    tiny_model: Path, tmp_path: Path
) -> None:
    run = prepare(tiny_model, tmp_path, "federation.min_replies=3")
    server = run.server
    state = initial_state(server)
    tasks, replies = train_round(run, state)
    replies[0] = ClientReply(tasks[0].client_id, None, 12, error="FloatingPointError: loss nan")
    with pytest.raises(RoundFailure, match=r"round 1: 1 of 3 clients failed .*min_replies=3"):
        aggregate_round(server, state, tasks, replies)


def test_a_diverging_client_reports_its_failure_instead_of_raising(
    tiny_model: Path, tmp_path: Path
) -> None:
    run = prepare(tiny_model, tmp_path, "federation.lr=1.0e+30", "federation.max_grad_norm=null")
    state = initial_state(run.server)
    (task,) = make_tasks(run.server, state, sample_clients(run.server, state)[:1])
    reply = local_update(run.engine.client, task)
    assert not reply.ok and reply.factors is None
    assert reply.error is not None and "FloatingPointError" in reply.error


def test_hetlora_pruning_shrinks_a_clients_ranks_when_the_regulariser_wins(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: a regulariser that dominates the loss, so every tail shrinks
    run = prepare(
        tiny_model,
        tmp_path,
        "method=hetlora",
        "method_options={reg_lambda: 100.0, gamma: 0.5}",
        "ranks.types=[8]",
    )
    server = run.server
    state = initial_state(server)
    state.class_factors = {  # a round-1 start with a live tail (fresh LoRA has B = 0)
        key: {
            n: LoraFactors(torch.full_like(f.B, 0.05), f.A, f.scaling) for n, f in factors.items()
        }
        for key, factors in fresh_factors(server, 0).items()
    }
    tasks, replies = train_round(run, state)

    # Execute
    new_state, _, _ = aggregate_round(server, state, tasks, replies)

    # Assert: the clients keep ⌊0.5 · 8⌋ = 4 components, and their next task says so
    for reply in replies:
        assert set(reply.ranks.values()) == {4}, reply.ranks
        assert reply.factors is not None
        assert all(float(f.B[:, 4:].abs().sum()) == 0 for f in reply.factors.values())
        assert set(new_state.client_ranks[reply.client_id].values()) == {4}
    again = make_tasks(server, new_state, [replies[0].client_id])[0]
    assert set(again.ranks.values()) == {4}


def test_flora_global_model_is_the_sum_of_its_merged_rounds(
    tiny_model: Path, tmp_path: Path
) -> None:
    run = prepare(tiny_model, tmp_path, "method=flora", "eval.seen=false")
    host = run.engine.client.adapters
    base = {n: layer.base_layer.weight.detach().clone() for n, layer in host._layers.items()}
    state: ServerState = initial_state(run.server)
    merged = []
    for _ in range(2):
        tasks, replies = train_round(run, state)
        state, result, _ = aggregate_round(run.server, state, tasks, replies)
        host.merge_into_base(result.global_update)
        merged.append(result.global_update)
    total = total_update(state, run.shapes)
    for name, layer in host._layers.items():
        expected = sum(u[name].B.double() @ u[name].A.double() for u in merged)  # (out, in)
        got = total[name].B.double() @ total[name].A.double()  # (out, ΣR) @ (ΣR, in)
        torch.testing.assert_close(got, expected)
        moved = layer.base_layer.weight.detach().double() - base[name].double()
        torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-6)
        assert float(expected.abs().max()) > 0


def test_fedex_folds_its_residual_into_the_base_and_the_global_model_stays_exact(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: one FedEx-LoRA round at one rank
    run = prepare(tiny_model, tmp_path, "method=fedex", "ranks.types=[4]")
    host = run.engine.client.adapters
    base = {
        n: layer.base_layer.weight.detach().double().clone() for n, layer in host._layers.items()
    }
    state = initial_state(run.server)
    tasks, replies = train_round(run, state)

    # Execute: aggregate and fold what the round hands the base
    state, result, _ = aggregate_round(run.server, state, tasks, replies)
    folded = base_change(result)
    assert folded is not None and folded is result.base_update
    host.merge_into_base(folded)

    # Assert: base moved by the residual; base + the recipients' update = W0 + dW
    (factors,) = (state.class_factors or {}).values()
    total = total_update(state, run.shapes)
    for name, layer in host._layers.items():
        dW = result.global_update[name].B.double() @ result.global_update[name].A.double()
        residual = folded[name].B.double() @ folded[name].A.double()  # (out, R) @ (R, in)
        moved = layer.base_layer.weight.detach().double() - base[name]
        torch.testing.assert_close(moved, residual, rtol=1e-5, atol=1e-6)
        f = factors[name]
        on_top = f.scaling * (f.B.double() @ f.A.double())  # (out, r) @ (r, in)
        g = state.global_update[name]  # type: ignore[index]
        torch.testing.assert_close(g.B.double() @ g.A.double(), on_top, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(moved + on_top, dW, rtol=1e-5, atol=1e-6)
        whole = total[name].B.double() @ total[name].A.double()
        torch.testing.assert_close(whole, dW, rtol=1e-5, atol=1e-7)
        assert float(residual.abs().max()) > 0  # clients differ: a real residual


def test_slora_trains_a_shared_sparse_mask_then_starts_lora_from_its_svd(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: SLoRA with FlexLoRA, one sparse round, a dense enough mask to see
    run = prepare(
        tiny_model,
        tmp_path,
        "method=slora+flexlora",
        "recipe_options={slora: {sparse_rounds: 1, density: 0.05}}",
        "lora.dropout=0.0",
    )
    server, host = run.server, run.engine.client.adapters
    base = {n: w.detach().clone() for n, w in host.base_weights().items()}
    state = initial_state(server)
    tasks = make_tasks(server, state, sample_clients(server, state))
    assert all(t.sparse is not None and not t.start for t in tasks)

    # Execute: the sparse round
    replies = [local_update(run.engine.client, t) for t in tasks]
    new_state, result, record = aggregate_round(server, state, tasks, replies)

    # Assert: the base is as it was; the average is data-weighted; LoRA starts from its SVD
    for name, w in host.base_weights().items():
        assert torch.equal(w, base[name]), name
    assert record["clients_failed"] == [] and new_state.sparse_delta is not None
    total = sum(r.num_examples for r in replies)
    masks = server.sparse_masks()
    for name, shape in server.shapes.items():
        expected = sum(r.num_examples / total * r.sparse[name].double() for r in replies)  # type: ignore[index]
        torch.testing.assert_close(new_state.sparse_delta[name].double(), expected)
        dense = torch.zeros(shape[0] * shape[1], dtype=torch.float64)
        dense[masks[name]] = expected
        dense = dense.view(shape)
        assert float(dense.abs().max()) > 0
        g = result.global_update[name]
        torch.testing.assert_close(g.B.double() @ g.A.double(), dense, rtol=1e-5, atol=1e-7)
        U, S, Vh = torch.linalg.svd(dense)
        for key, factors in (new_state.class_factors or {}).items():
            f = factors[name]
            r = min(f.rank, int((1e-12 * S[0] < S).sum()))
            best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]  # (out, r) (r, r) (r, in)
            got = f.scaling * (f.B.double() @ f.A.double())
            assert float((got - best).norm()) <= 1e-5 * float(best.norm()), (key, name)

    # and the next round is a LoRA round from those factors
    lora_tasks = make_tasks(server, new_state, sample_clients(server, new_state))
    assert all(t.sparse is None and t.start for t in lora_tasks)
    first = lora_tasks[0]
    assert torch.equal(
        first.start[next(iter(server.shapes))].B,
        (new_state.class_factors or {})[first.rank_class][next(iter(server.shapes))].B,
    )


def test_an_aggregate_that_overflows_stops_the_round_before_anything_is_kept(
    tiny_model: Path, tmp_path: Path
) -> None:
    run = prepare(tiny_model, tmp_path)
    server = run.server
    state = initial_state(server)
    tasks, replies = train_round(run, state)
    huge = [
        dataclasses.replace(
            r,
            factors={
                n: LoraFactors(f.B.fill_(3e38), f.A.fill_(3e38), f.scaling)
                for n, f in r.factors.items()
            },  # type: ignore[union-attr]
        )
        for r in replies
    ]
    with pytest.raises(RoundFailure, match=r"round 1: the aggregat.* lower federation\.lr"):
        aggregate_round(server, state, tasks, huge)


def test_a_client_whose_update_is_too_large_is_left_out(tiny_model: Path, tmp_path: Path) -> None:
    # Prepare: a bound between the clients' update norms, so some pass and some do not
    run = prepare(tiny_model, tmp_path)
    state = initial_state(run.server)
    tasks, replies = train_round(run, state)
    largest = {  # per client: its largest ‖s B A‖_F over modules, in float64
        r.client_id: max(
            float((f.scaling * (f.B.double() @ f.A.double())).norm())
            for f in (r.factors or {}).values()
        )
        for r in replies
    }
    bound = sorted(largest.values())[1]  # the smallest client passes, the largest not
    bounded = prepare(tiny_model, tmp_path, f"federation.max_update_norm={bound * 1.000001}")

    # Execute
    _, _, record = aggregate_round(bounded.server, state, tasks, replies)

    # Assert: exactly the clients above the bound are out, with the bound named
    out = {f["client"] for f in record["clients_failed"]}
    assert out == {c for c, n in largest.items() if n > bound * 1.000001} and out
    assert all(
        "exceeds federation.max_update_norm" in f["reason"] for f in record["clients_failed"]
    )


@pytest.mark.parametrize(
    ("option", "rtol", "loss_rtol"),
    [
        ("federation.gradient_checkpointing=true", 1e-5, 1e-6),  # the same maths, recomputed
        # a bf16 forward: AdamW's first steps normalise each gradient entry, so small
        # rounding differences move the small entries of the update by tens of percent;
        # the update keeps its direction and the loss its value
        ("federation.autocast=bfloat16", 0.25, 0.01),
    ],
)
def test_training_options_give_the_same_update_within_tolerance(
    option: str, rtol: float, loss_rtol: float, tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: the same task, trained plainly and with the option (dropout on)
    plain = prepare(tiny_model, tmp_path)
    other = prepare(tiny_model, tmp_path, option)
    state = initial_state(plain.server)
    (task,) = make_tasks(plain.server, state, sample_clients(plain.server, state)[:1])

    # Execute
    a = local_update(plain.engine.client, task)
    b = local_update(other.engine.client, task)

    # Assert: the trained updates agree to the tolerance, and training moved them
    assert a.ok and b.ok and a.factors is not None and b.factors is not None
    worst, cosine = 0.0, 1.0
    for name, fa in a.factors.items():
        fb = b.factors[name]
        da = fa.scaling * (fa.B.double() @ fa.A.double())  # (out, r) @ (r, in)
        db = fb.scaling * (fb.B.double() @ fb.A.double())
        assert float(da.norm()) > 0
        worst = max(worst, float((da - db).norm() / da.norm()))
        cosine = min(cosine, float((da * db).sum() / (da.norm() * db.norm())))
    assert worst <= rtol, worst
    assert cosine >= 1 - rtol**2, cosine
    assert abs(a.loss - b.loss) <= loss_rtol * abs(a.loss), (a.loss, b.loss)
    if "gradient_checkpointing" in option:
        assert not other.engine.client.adapters.model.is_gradient_checkpointing  # switched back
