"""The crystal kind's worker part: load a classifier and its labels, validate requests, answer
a batch with one model call. Imported by model workers only (by the kind's `loader` string).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelserver.errors import BadRequest, ConfigError, InvalidInput, ModelFailure, ServingError
from modelserver.kinds import ModelFiles
from modelserver.kinds.contract import Predictor
from modelserver.kinds.crystal import CrystalRequest, CrystalSettings
from modelserver.validation import quoted, validate_body

# Scores that overflow from values beyond this are the request's fault; from smaller ones, the model's.
SCORABLE_MAGNITUDE = 1e6

log = logging.getLogger(__name__)


class Classifier(Protocol):
    """What a crystal predictor needs from a model file, whatever the framework."""

    n_features: int
    n_classes: int

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Return one row of class probabilities per input row."""


# Each framework's loader lives in its own module so serving one never imports the other.
LOADERS: dict[str, str] = {
    "sklearn": "modelserver.kinds.crystal.sklearn_classifier",
    "pytorch": "modelserver.kinds.crystal.torch_classifier",
}


def load_classifier(framework: str, path: Path, threads: int) -> Classifier:
    """Load a model file with the loader registered for its framework."""
    module = importlib.import_module(LOADERS[framework])
    return module.load(path, threads)


class CrystalPredictor(Predictor[CrystalRequest]):
    """Validates crystal requests and answers a batch of them with one model call."""

    def __init__(
        self,
        classifier: Classifier,
        labels: Sequence[str],
        settings: CrystalSettings,
        names: Sequence[str] = (),
    ) -> None:
        if len(labels) != classifier.n_classes:
            raise ConfigError(f"{len(labels)} labels for a model with {classifier.n_classes} classes")
        self._classifier = classifier
        self._labels = list(labels)
        self._settings = settings
        self._names = list(names)

    @property
    def labels(self) -> list[str]:
        """Label names, in the model's class order."""
        return list(self._labels)

    def parse(self, payload: Any) -> CrystalRequest:
        """Validate one decoded body; anomalies raise `InvalidInput`, a wrong model `BadRequest`."""
        request = validate_body(CrystalRequest, payload, "crystalData")
        if request.model_name is not None and self._names and request.model_name not in self._names:
            raise BadRequest(f"model_name {quoted(request.model_name)} is not this model ({self._names[0]})")
        if request.model is not None and request.model != self._settings.framework:
            raise BadRequest(
                f"this route serves the {self._settings.framework} model, "
                f"but 'model' asks for {quoted(request.model)}"
            )
        if len(request.crystalData) > self._settings.max_rows:
            raise InvalidInput(f"at most {self._settings.max_rows} rows per request")
        width = self._classifier.n_features
        for index, row in enumerate(request.crystalData):
            if len(row) != width:
                raise InvalidInput(f"crystalData[{index}] has {len(row)} values; each row needs {width}")
        return request

    def predict(self, requests: Sequence[CrystalRequest]) -> list[dict[str, Any] | ServingError]:
        """Answer every request from one model call over all their rows."""
        rows = np.array([row for r in requests for row in r.crystalData], dtype=np.float64)
        probabilities = self._classifier.predict_proba(rows)
        if probabilities.shape != (len(rows), len(self._labels)):
            raise ModelFailure(f"the model returned scores of shape {probabilities.shape}")
        answers: list[dict[str, Any] | ServingError] = []
        start = 0
        for request in requests:
            stop = start + len(request.crystalData)
            chunk = probabilities[start:stop]
            if not np.all(np.isfinite(chunk)):
                answers.append(_not_finite(rows[start:stop]))
            else:
                answers.append(self._answer(chunk))
            start = stop
        return answers

    def _answer(self, probabilities: np.ndarray) -> dict[str, Any]:
        return {
            "prediction": [self._labels[int(i)] for i in probabilities.argmax(axis=1)],
            "scores": [dict(zip(self._labels, map(float, row), strict=True)) for row in probabilities],
        }


def _not_finite(rows: np.ndarray) -> ServingError:
    """Scores that are not finite numbers: values so large that the model's arithmetic
    overflowed are the request's fault (422, this request only); from moderate values it is
    the model's (500)."""
    if np.abs(rows).max(initial=0.0) > SCORABLE_MAGNITUDE:
        return InvalidInput("crystalData values are too large for the model to score: its scores overflowed")
    return ModelFailure("the model returned scores that are not finite numbers")


def read_labels(path: Path) -> list[str]:
    """Read a labels file: a JSON list of names, in class order."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read labels from {path.name}: {error}") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{path.name} must be a JSON list of label names")
    return labels


def load_crystal_predictor(files: ModelFiles[CrystalSettings]) -> CrystalPredictor:
    """Build the predictor from an unpacked archive: model file, labels file, settings."""
    parsed = files.settings
    classifier = load_classifier(parsed.framework, files.model_dir / files.model_file, parsed.threads)
    labels = read_labels(files.model_dir / parsed.labels_file)
    log.info(
        "loaded %s crystal model: %d features, labels %s",
        parsed.framework,
        classifier.n_features,
        labels,
    )
    return CrystalPredictor(classifier, labels, parsed, files.names)
