"""The sentence `flexlora run` closes with: what the run shows on the unseen clients."""

from __future__ import annotations

from typing import Any

from flexlora.commands.run import unseen_headline


def _summary(baseline: dict[str, float] | None, unseen_clients: int = 6) -> dict[str, Any]:
    return {
        "data": {"unseen_clients": unseen_clients},
        "rounds_completed": 10,
        "final": {"unseen_rougeL": 21.5, "unseen_loss": 3.25},
        "baseline": baseline,
    }


def test_headline_states_the_change_from_the_base_model_with_its_sign() -> None:
    text = unseen_headline(_summary({"unseen_rougeL": 1.25, "unseen_loss": 8.0}))
    assert text == (
        "On the 6 unseen clients (never trained on), 10 rounds of federated training took "
        "Rouge-L from 1.25 to 21.50 (+20.25) and loss from 8.000 to 3.250 (-4.750)."
    )
    worse = unseen_headline(_summary({"unseen_rougeL": 30.0, "unseen_loss": 3.0}))
    assert "from 30.00 to 21.50 (-8.50)" in worse and "from 3.000 to 3.250 (+0.250)" in worse


def test_headline_without_a_base_model_score_or_unseen_clients() -> None:
    text = unseen_headline(_summary(None))
    assert text.startswith("On the 6 unseen clients (never trained on), the global model scores")
    assert "Rouge-L 21.50 and loss 3.250 after 10 rounds" in text
    assert "eval.baseline is false" in text
    assert unseen_headline(_summary(None, unseen_clients=0)).startswith("No unseen clients")
