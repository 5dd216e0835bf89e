"""Newsgroup topic classifier: train, select by cross-validation, evaluate, persist.

The brief's baseline (counts -> tf-idf -> multinomial naive Bayes) and a few improved candidates
are scored by 5-fold cross-validation on the training set only; the best improved one is fitted
on the training set and evaluated once on the test set. Models are saved with skops, whose loader
refuses any type not on an allowlist (no arbitrary code at load, unlike pickle/joblib).

Data: the brief's jsonl.gz files, or, without them, scikit-learn's 20 Newsgroups download with
the eight groups behind the brief's six labels (`NEWSGROUPS_LABELS`). The download is bounded by
a socket timeout so an offline machine fails in seconds (the model is then skipped, not hung),
and scikit-learn caches it in its data home (`SCIKIT_LEARN_DATA`, default ~/scikit_learn_data).
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
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

from modelserver.errors import ConfigError, SourceUnavailable

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

# scikit-learn's 20 Newsgroups groups behind the brief's six labels. All three talk.politics
# groups are "politics" (the brief's own files hold talk.politics.misc only, by their counts).
NEWSGROUPS_LABELS: dict[str, str] = {
    "sci.space": "space",
    "sci.electronics": "electronics",
    "sci.crypt": "cryptography",
    "talk.politics.guns": "politics",
    "talk.politics.mideast": "politics",
    "talk.politics.misc": "politics",
    "rec.sport.hockey": "hockey",
    "rec.sport.baseball": "baseball",
}
# Served texts are bare text: headers (From, Organization), signatures and quoted replies would
# let a model learn who posted, or the post it answers, rather than the topic.
NEWSGROUPS_REMOVE = ("headers", "footers", "quotes")
NEWSGROUPS_NOTE = (
    "scikit-learn's 20 Newsgroups (bydate split; headers, footers and quotes removed), "
    "8 groups mapped to the 6 labels"
)
# Each connect or read of the download waits at most this long, and fails after one retry.
DOWNLOAD_TIMEOUT_S = 20.0
DOWNLOAD_RETRIES = 1
# sklearn.datasets.fetch_20newsgroups, or a stand-in with its signature (tests pass a fake).
Fetcher = Callable[..., Any]


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


def fetch_bounded(**options: Any) -> Any:
    """scikit-learn's `fetch_20newsgroups` with every socket operation bounded: its download
    (urllib) has no timeout of its own, so a network that drops packets would hang the build."""
    from sklearn.datasets import fetch_20newsgroups  # pylint: disable=import-outside-toplevel

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return fetch_20newsgroups(**options, n_retries=DOWNLOAD_RETRIES, delay=1.0)
    finally:
        socket.setdefaulttimeout(previous)


def newsgroups_dataset(subset: str, fetcher: Fetcher | None = None) -> Dataset:
    """Texts and the brief's labels of one 20 Newsgroups subset ('train' or 'test'); posts
    left empty once headers, footers and quotes are removed are dropped. Any failure to get
    the data (network, disk, a corrupt cache) is `SourceUnavailable`: the model is skipped."""
    fetch = fetcher or fetch_bounded
    try:
        bunch = fetch(
            subset=subset,
            categories=sorted(NEWSGROUPS_LABELS),
            remove=NEWSGROUPS_REMOVE,
            shuffle=True,
            random_state=0,
        )
        names, posts, targets = list(bunch.target_names), list(bunch.data), list(bunch.target)
    except Exception as error:  # pylint: disable=broad-exception-caught  # whatever stops the download
        raise SourceUnavailable(
            f"the 20 Newsgroups download failed ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    texts, labels = [], []
    for text, target in zip(posts, targets, strict=True):
        group = names[int(target)]
        if group not in NEWSGROUPS_LABELS:
            raise ConfigError(f"the 20 Newsgroups {subset} subset holds an unexpected group {group!r}")
        if str(text).strip():
            texts.append(str(text))
            labels.append(NEWSGROUPS_LABELS[group])
    if not texts:
        raise ConfigError(f"the 20 Newsgroups {subset} subset holds no posts")
    log.info(
        "20 Newsgroups %s: %d posts (%d empty once stripped)", subset, len(texts), len(posts) - len(texts)
    )
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


def train(
    output: Path, inputs: dict[str, Path] | None = None, fetcher: Fetcher | None = None
) -> dict[str, Any]:
    """Recipe: choose the improved model by CV on `inputs['train']` (given no inputs at all: on
    the 20 Newsgroups download, the catalogue's fallback), fit it, save it to `output`."""
    if inputs:
        if "train" not in inputs:
            raise ConfigError("the topics recipe needs a training set")
        data, trained_on = read_dataset(inputs["train"]), inputs["train"].name
    else:
        data, trained_on = newsgroups_dataset("train", fetcher), NEWSGROUPS_NOTE
    scores = cross_validate(data)
    chosen = choose_improved(scores)
    model = CANDIDATES[chosen]().fit(*data)
    save_model(model, output)
    log.info("topics: chose %s (CV accuracy %.4f) on %s", chosen, scores[chosen], trained_on)
    return {"chosen": chosen, "cv_accuracy": scores, "data": trained_on, "train_size": len(data[0])}


def evaluation_report(
    train_data: Dataset, test_data: Dataset, folds: int = 5, data: str = ""
) -> tuple[dict[str, Any], Pipeline]:
    """Cross-validate every candidate on train, fit the baseline and the chosen improved model,
    evaluate both once on test. Returns the report (`data` says what the sets are) and the
    improved (served) model."""
    scores = cross_validate(train_data, folds=folds)
    chosen = choose_improved(scores)
    report: dict[str, Any] = {
        **({"data": data} if data else {}),
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
