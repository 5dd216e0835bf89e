"""TorchServe handler for fill-mask models (bert-base-uncased, camembert-base).

All logic lives in `modelserver.kinds.fill_mask`; this file only names the model kind.
"""

from modelserver.kinds.fill_mask import load_fill_mask_runtime
from modelserver.serving.torchserve_adapter import TorchServeAdapter


class FillMaskHandler(TorchServeAdapter):
    """Serves one masked-LM checkpoint."""

    load_runtime = staticmethod(load_fill_mask_runtime)
