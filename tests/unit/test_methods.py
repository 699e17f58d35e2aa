"""Methods as a recipe (client side) paired with an aggregation (server side)."""

from __future__ import annotations

import pytest

from flexlora.errors import FlexLoraError
from flexlora.methods import get_federated_method


def test_a_pair_names_its_recipe_and_its_aggregation() -> None:
    method = get_federated_method("fedavg+flexlora")
    assert (method.recipe.name, method.recipe.optimizer) == ("fedavg", "sgd")
    assert method.aggregation.name == "flexlora" and not method.single_rank
    assert get_federated_method("fedit+fedit").single_rank
    assert get_federated_method("hetlora+zeropad").recipe.name == "hetlora"


def test_a_single_name_is_the_method_as_its_paper_runs_it() -> None:
    flexlora = get_federated_method("flexlora")
    assert flexlora.recipe.name == "local" and flexlora.recipe.optimizer is None
    assert get_federated_method("hetlora").recipe.name == "hetlora"
    ffa = get_federated_method("ffa")
    assert ffa.recipe.freeze_A and ffa.aggregation.shared_A


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("fedit+ffa", "pair it with the ffa recipe"),
        ("ffa+flexlora", "pair it with the ffa aggregation"),
        ("sgd+flexlora", "unknown recipe 'sgd'"),
        ("fedavg+fedprox", "unknown aggregation method 'fedprox'"),
        ("fedprox", "unknown method 'fedprox'"),
    ],
)
def test_pairs_that_cannot_work_are_refused_saying_why(name: str, reason: str) -> None:
    with pytest.raises(FlexLoraError, match=reason):
        get_federated_method(name)


def test_options_go_to_the_part_they_belong_to() -> None:
    # a single name: one mapping feeds both parts
    recipe, aggregation = get_federated_method("hetlora").resolve_options(
        {"gamma": 0.5, "reg_lambda": 0.1, "weighting": "sparsity"}, {}, 0
    )
    assert recipe == {"gamma": 0.5, "reg_lambda": 0.1}
    assert aggregation == {"gamma": 0.5, "reg_lambda": 0.1, "weighting": "sparsity"}
    # a pair: each part its own
    pair = get_federated_method("hetlora+flexlora")
    options = {"hetlora": {"reg_lambda": 0.1}, "slora": {"sparse_rounds": 2}}  # a grid's
    recipe, aggregation = pair.resolve_options({"svd": "exact"}, options, 0)
    assert recipe == {"reg_lambda": 0.1} and aggregation == {"svd": "exact"}
    with pytest.raises(FlexLoraError, match="gamma"):
        pair.resolve_options({"gamma": 0.5}, {}, 0)  # a recipe option given to FlexLoRA
    with pytest.raises(FlexLoraError, match=r"recipe_options\.hetlora: method hetlora takes"):
        get_federated_method("hetlora").resolve_options({}, {"hetlora": {"gamma": 0.5}}, 0)
    with pytest.raises(FlexLoraError, match=r"recipe_options\.sgd: not a recipe"):
        get_federated_method("flexlora").resolve_options({}, {"sgd": {}}, 0)
    with pytest.raises(FlexLoraError, match="sparse_rounds must be >= 1"):
        get_federated_method("slora+flexlora").resolve_options(
            {}, {"slora": {"sparse_rounds": 0}}, 0
        )


def test_ffa_hands_the_aggregation_the_seed_its_clients_draw_A_from() -> None:
    recipe, aggregation = get_federated_method("ffa").resolve_options({}, {}, 7)
    assert recipe["seed"] == aggregation["seed"] and isinstance(recipe["seed"], int)
    pair = get_federated_method("ffa+ffa")
    recipe, aggregation = pair.resolve_options({}, {"ffa": {"seed": 3}}, 7)
    assert recipe["seed"] == aggregation["seed"] == 3
