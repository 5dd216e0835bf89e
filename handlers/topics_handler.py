"""TorchServe handler for the newsgroup topic classifier (POST /prediction).

All logic lives in `modelserver.kinds.topics`; this file only names the model kind.
"""

from modelserver.kinds.topics import load_topics_runtime
from modelserver.serving.torchserve_adapter import TorchServeAdapter


class TopicsHandler(TorchServeAdapter):
    """Serves the skops-saved scikit-learn text pipeline."""

    load_runtime = staticmethod(load_topics_runtime)
