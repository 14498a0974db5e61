"""Task metrics, computed with the field's own libraries where one exists.

One scale for every task: accuracy, precision, recall, F1, exact match, ROUGE and BLEU are
percentages (0-100, as SQuAD's and sacrebleu's official scripts report them); correlations
(Pearson, Spearman, Matthews) stay in [-1, 1]; MSE and the loss are as they are.

=====================  =====================================================  ===========
task                   metrics                                                library
=====================  =====================================================  ===========
classification         accuracy, F1 (binary: of the second label; else macro), scikit-learn
                       Matthews correlation (``mcc``)
regression             Pearson, Spearman, mean squared error                  scipy
tagging                entity-level precision / recall / F1, word accuracy    seqeval
extractive QA          SQuAD exact match and F1 (the official normalisation)   (below)
text generation        ROUGE-1/2/L F-measure, BLEU, exact match               rouge-score,
                                                                              sacrebleu
=====================  =====================================================  ===========

``seqeval``, ``rouge-score`` and ``sacrebleu`` are optional: a task that needs one that is
not installed stops with a one-line error saying what to install.
"""

from __future__ import annotations

import collections
import importlib
import math
import re
import string
from collections.abc import Sequence
from types import ModuleType

from triform.errors import TriformError

PERCENT = 100.0
# The metrics reported as percentages (the rest: correlations, MSE, loss).
PERCENT_METRICS = frozenset(
    {"accuracy", "f1", "precision", "recall", "exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
)


def format_metric(name: str, value: float | None) -> str:
    """``"accuracy 93.75%"``, ``"pearson 0.8123"``: a metric with its scale."""
    if value is None or value != value:
        return f"{name} n/a"
    if name in PERCENT_METRICS:
        return f"{name} {value:.2f}%"
    return f"{name} {value:.4g}"


def require(module: str, package: str, what: str) -> ModuleType:
    """Import ``module`` or raise a :class:`TriformError` telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TriformError(f"{what} needs the {package} package: pip install {package}") from None


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else math.nan


def classification_metrics(
    predictions: Sequence[int], references: Sequence[int], num_labels: int
) -> dict[str, float]:
    """Accuracy and F1 (percent) and Matthews correlation of label indices."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    average = "binary" if num_labels == 2 else "macro"
    labels = list(range(num_labels))
    return {
        "accuracy": PERCENT * float(accuracy_score(references, predictions)),
        "f1": PERCENT
        * float(
            f1_score(
                references,
                predictions,
                labels=labels if average == "macro" else None,
                average=average,
                pos_label=1,
                zero_division=0,
            )
        ),
        "mcc": float(matthews_corrcoef(references, predictions)),
    }


def choice_metrics(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """Accuracy (percent) of multiple-choice answers."""
    from sklearn.metrics import accuracy_score

    return {"accuracy": PERCENT * float(accuracy_score(references, predictions))}


def regression_metrics(
    predictions: Sequence[float], references: Sequence[float]
) -> dict[str, float]:
    """Pearson and Spearman correlation (NaN when either side is constant) and MSE."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    pred = np.asarray(predictions, dtype=np.float64)
    ref = np.asarray(references, dtype=np.float64)
    constant = len(pred) < 2 or pred.std() == 0 or ref.std() == 0
    return {
        "pearson": math.nan if constant else _finite(pearsonr(pred, ref)[0]),
        "spearman": math.nan if constant else _finite(spearmanr(pred, ref)[0]),
        "mse": float(np.mean((pred - ref) ** 2)),
    }


def entity_metrics(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL scheme: an entity counts only
    when its type and both ends are right) and word-level accuracy, all in percent."""
    seqeval = require("seqeval.metrics", "seqeval", "entity-level F1 for tagging")
    preds, refs = [list(p) for p in predictions], [list(r) for r in references]
    return {
        "f1": PERCENT * float(seqeval.f1_score(refs, preds, zero_division=0)),
        "precision": PERCENT * float(seqeval.precision_score(refs, preds, zero_division=0)),
        "recall": PERCENT * float(seqeval.recall_score(refs, preds, zero_division=0)),
        "accuracy": PERCENT * float(seqeval.accuracy_score(refs, preds)),
    }


# --------------------------------------------------------------------------------------
# SQuAD exact match and F1 (the normalisation of the official evaluation script)
# --------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """F1 of the bags of normalised words."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Exact match and F1 (percent), each the best over an example's gold answers."""
    if not predictions:
        return {"exact_match": math.nan, "f1": math.nan}
    em = f1 = 0.0
    for prediction, golds in zip(predictions, references, strict=True):
        golds = list(golds) or [""]
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    n = len(predictions)
    return {"exact_match": PERCENT * em / n, "f1": PERCENT * f1 / n}


# --------------------------------------------------------------------------------------
# Text generation
# --------------------------------------------------------------------------------------


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (rouge-score, stemmed), corpus BLEU (sacrebleu) and exact match,
    all in percent."""
    rouge_scorer = require("rouge_score.rouge_scorer", "rouge-score", "ROUGE")
    sacrebleu = require("sacrebleu", "sacrebleu", "BLEU")
    if not predictions:
        return {k: math.nan for k in ("rougeL", "rouge1", "rouge2", "bleu", "exact_match")}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = collections.Counter()
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    n = len(predictions)
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    same = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return {
        "rougeL": PERCENT * totals["rougeL"] / n,
        "rouge1": PERCENT * totals["rouge1"] / n,
        "rouge2": PERCENT * totals["rouge2"] / n,
        "bleu": float(bleu),
        "exact_match": PERCENT * same / n,
    }
