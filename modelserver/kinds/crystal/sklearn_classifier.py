"""scikit-learn crystal classifiers: a fitted estimator with `predict_proba`, from joblib."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.exceptions import InconsistentVersionWarning
from threadpoolctl import threadpool_limits

from modelserver.errors import ConfigError

log = logging.getLogger(__name__)


class SklearnClassifier:
    """Adapts a fitted estimator whose classes are 0..n-1 to the crystal `Classifier`."""

    def __init__(self, estimator: Any) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise ConfigError(f"{type(estimator).__name__} has no predict_proba")
        classes = [int(c) for c in getattr(estimator, "classes_", [])]
        self.n_features = int(getattr(estimator, "n_features_in_", 0))
        if not self.n_features or not classes or classes != list(range(len(classes))):
            raise ConfigError("the estimator must be fitted, with classes 0..n-1")
        self.n_classes = len(classes)
        self._estimator = estimator

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities as float64, one row per input row."""
        return np.asarray(self._estimator.predict_proba(rows), dtype=np.float64)


def load(path: Path, threads: int) -> SklearnClassifier:
    """Load a joblib file. Unpickling runs code: serve only files the operator chose."""
    threadpool_limits(threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InconsistentVersionWarning)
            estimator = joblib.load(path)
    except Exception as error:  # a corrupt or foreign file: fail the load with its reason
        raise ConfigError(f"cannot load {path.name} with joblib: {error}") from error
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            message = warning.message
            log.warning(
                "%s was saved with scikit-learn %s and is served with %s: check its answers",
                path.name,
                message.original_sklearn_version,
                message.current_sklearn_version,
            )
    return SklearnClassifier(estimator)
