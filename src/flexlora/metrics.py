"""Rouge-L as the FlexLoRA paper and Super-NaturalInstructions score it, on a 0–100 scale.

Scorer: Google's `rouge-score` package, `RougeScorer(["rougeL"], use_stemmer=True)` with its
default tokenizer: this is the default scorer of SNI's `compute_metrics.py` (and of its
`eval/automatic/evaluation.py`), whose numbers the FlexLoRA paper reports. Every
Rouge-L in flexlora is the F-measure × 100, the scale of the paper's tables.

Known limit, kept on purpose: the default tokenizer lower-cases and keeps only ASCII
letters and digits, so a reference written in a non-Latin script tokenises to nothing and
scores 0 whatever the prediction. SNI scores such tasks with a second, "xlingual" scorer
built on a GPT-2 tokenizer; we do not, because that needs a hub download and the paper's
tables use the English scorer. Non-English clients therefore pull the mean down for every
method alike; compare methods on the same clients, and read `per_category` for the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flexlora.errors import FlexLoraError

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer


@functools.lru_cache(maxsize=2)
def rouge_l_scorer(use_stemmer: bool = True) -> RougeScorer:
    """The shared Rouge-L scorer (built once: the Porter stemmer carries a cache)."""
    # Imported on first use: rouge-score loads nltk, and nltk scipy.stats (about 0.9 s
    # per process on the 2-core machine of docs/benchmarks.md), which a process that
    # only trains, such as the Flower ClientApp that starts for every message, never needs.
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """Rouge-L F-measure of one prediction against one reference, in [0, 100].

    F = 2·P·R / (P + R) with P = LCS / |prediction| and R = LCS / |reference|, counted in
    the scorer's tokens (lower-cased ASCII words, Porter-stemmed). F is symmetric in its
    two arguments. An empty side (after tokenisation) scores 0, as in `rouge-score`.
    """
    score = rouge_l_scorer(use_stemmer).score(reference, prediction)["rougeL"]
    return 100.0 * float(score.fmeasure)


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Σ w_i · v_i / Σ w_i; raise on mismatched lengths or a non-positive total weight."""
    if len(values) != len(weights):
        raise FlexLoraError(f"weighted_mean: {len(values)} values but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise FlexLoraError(f"weighted_mean: weights must sum to a positive number, got {total}")
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total
