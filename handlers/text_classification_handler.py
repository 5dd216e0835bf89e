"""TorchServe handler for text classification (the sentiment model).

All logic lives in `modelserver.kinds.text_classification`; this file only names the kind.
"""

from modelserver.kinds.text_classification import load_text_classification_runtime
from modelserver.serving.torchserve_adapter import TorchServeAdapter


class TextClassificationHandler(TorchServeAdapter):
    """Serves one sequence-classification checkpoint."""

    load_runtime = staticmethod(load_text_classification_runtime)
