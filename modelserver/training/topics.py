"""Newsgroup topic classifier: train, select by cross-validation, evaluate, persist.

The brief's baseline (counts -> tf-idf -> multinomial naive Bayes) and a few improved candidates
are scored by 5-fold cross-validation on the training set only; the best improved one is fitted
on the training set and evaluated once on the test set. Models are saved with skops, whose loader
refuses any type not on an allowlist (no arbitrary code at load, unlike pickle/joblib).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.naive_bayes import ComplementNB, MultinomialNB
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from modelserver.errors import ConfigError

log = logging.getLogger(__name__)

BASELINE = "baseline_counts_tfidf_multinomialnb"
CANDIDATES: dict[str, Callable[[], Pipeline]] = {
    BASELINE: lambda: Pipeline(
        [("counts", CountVectorizer()), ("tfidf", TfidfTransformer()), ("model", MultinomialNB())]
    ),
    "tfidf_sublinear_linearsvc": lambda: Pipeline(
        [("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=2)), ("model", LinearSVC(C=1.0))]
    ),
    "tfidf_bigrams_linearsvc": lambda: Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))),
            ("model", LinearSVC(C=1.0)),
        ]
    ),
    "tfidf_sublinear_complementnb": lambda: Pipeline(
        [("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=2)), ("model", ComplementNB(alpha=0.3))]
    ),
}
Dataset = tuple[list[str], list[str]]


def read_dataset(path: Path) -> Dataset:
    """Texts and labels from a jsonl.gz file of `{"text": ..., "label": ...}` lines."""
    texts, labels = [], []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    row = json.loads(line)
                    texts.append(str(row["text"]))
                    labels.append(str(row["label"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    if not texts:
        raise ConfigError(f"{path} holds no examples")
    return texts, labels


def cross_validate(
    data: Dataset, names: Sequence[str] = tuple(CANDIDATES), folds: int = 5
) -> dict[str, float]:
    """Mean cross-validated accuracy of each candidate, on the training set only."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return {name: float(np.mean(cross_val_score(CANDIDATES[name](), *data, cv=splitter))) for name in names}


def choose_improved(scores: dict[str, float]) -> str:
    """The best candidate other than the baseline."""
    return max((name for name in scores if name != BASELINE), key=scores.__getitem__)


def evaluate(model: Pipeline, test: Dataset) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    texts, truth = test
    predicted = model.predict(texts)
    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "labels": labels,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
    }


def save_model(model: Pipeline, path: Path) -> None:
    """Persist with skops (a format whose loader does not run arbitrary code)."""
    import skops.io  # pylint: disable=import-outside-toplevel

    skops.io.dump(model, path)


def train(output: Path, inputs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Recipe: choose the improved model by CV on `inputs['train']`, fit it, save it to `output`."""
    if not inputs or "train" not in inputs:
        raise ConfigError("the topics recipe needs a training set")
    data = read_dataset(inputs["train"])
    scores = cross_validate(data)
    chosen = choose_improved(scores)
    model = CANDIDATES[chosen]().fit(*data)
    save_model(model, output)
    log.info("topics: chose %s (CV accuracy %.4f)", chosen, scores[chosen])
    return {"chosen": chosen, "cv_accuracy": scores}


def evaluation_report(
    train_data: Dataset, test_data: Dataset, folds: int = 5
) -> tuple[dict[str, Any], Pipeline]:
    """Cross-validate every candidate on train, fit the baseline and the chosen improved model,
    evaluate both once on test. Returns the report and the improved (served) model."""
    scores = cross_validate(train_data, folds=folds)
    chosen = choose_improved(scores)
    report: dict[str, Any] = {
        "train_size": len(train_data[0]),
        "test_size": len(test_data[0]),
        "folds": folds,
        "cv_accuracy": scores,
    }
    improved = CANDIDATES[chosen]().fit(*train_data)
    for role, name, model in (
        ("baseline", BASELINE, CANDIDATES[BASELINE]().fit(*train_data)),
        ("improved", chosen, improved),
    ):
        report[role] = {"name": name, "test": evaluate(model, test_data)}
    return report, improved
