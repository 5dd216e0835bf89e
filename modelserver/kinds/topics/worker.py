"""The topics kind's worker part: the skops pipeline, loaded with allowlisted types only, and
the spec's validation. Imported by model workers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from modelserver.errors import ConfigError, SpecValidationFailed
from modelserver.kinds import ModelFiles
from modelserver.kinds.contract import Predictor
from modelserver.kinds.topics import TopicsRequest, TopicsSettings
from modelserver.validation import validate_body

# What a saved topics model may contain; anything else makes the load fail.
TRUSTED_TYPES = [
    "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.naive_bayes.MultinomialNB",
    "sklearn.naive_bayes.ComplementNB",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.pipeline.Pipeline",
    "builtins.dict",
    "numpy.float64",
    "numpy.int64",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csr.csr_array",
]


class TopicsPredictor(Predictor[TopicsRequest]):
    """Validates requests and labels every text of a batch with one pipeline call."""

    invalid_input = SpecValidationFailed  # bodies that are not JSON get the spec's 405 too

    def __init__(self, model: Any, settings: TopicsSettings) -> None:
        self._model = model
        self._settings = settings

    def parse(self, payload: Any) -> TopicsRequest:
        """Validate one body; every failure is the spec's 405. A Hugging Face Inference API
        body (`inputs`, one text, and no `text`) is read as that text, not as an empty document."""
        if isinstance(payload, dict) and "text" not in payload and isinstance(payload.get("inputs"), str):
            payload = {**payload, "text": payload["inputs"]}
        request = validate_body(TopicsRequest, payload, "text", SpecValidationFailed)
        if len(request.text) > self._settings.max_chars:
            raise SpecValidationFailed(f"text is longer than {self._settings.max_chars} characters")
        try:  # JSON can escape half a UTF-16 pair ("\ud800"): not Unicode text, refused as elsewhere
            request.text.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecValidationFailed("text is not valid Unicode (it holds a lone surrogate)") from None
        return request

    def predict(self, requests: Sequence[TopicsRequest]) -> list[dict[str, str]]:
        """One `{"label"}` per request."""
        labels = self._model.predict([request.text for request in requests])
        return [{"label": str(label)} for label in labels]


def load_pipeline(path: Path) -> Any:
    """Load a skops file, refusing any type outside `TRUSTED_TYPES`. skops (and through it
    scikit-learn) is imported here, when a worker loads the model."""
    import skops.io  # pylint: disable=import-outside-toplevel

    try:
        untrusted = set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ConfigError(f"{path.name} holds types that are not trusted: {sorted(untrusted)}")
        return skops.io.load(path, trusted=TRUSTED_TYPES)
    except ConfigError:
        raise
    except Exception as error:  # a corrupt or foreign file: fail the load with its reason
        raise ConfigError(f"cannot load {path.name} with skops: {error}") from None


def load_topics_predictor(files: ModelFiles[TopicsSettings]) -> TopicsPredictor:
    """Load the skops model the archive holds (allowlisted types only)."""
    threadpool_limits(files.settings.threads)
    return TopicsPredictor(load_pipeline(files.model_dir / files.model_file), files.settings)
