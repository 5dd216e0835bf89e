"""TorchServe handler for the crystal classifiers (scikit-learn or PyTorch).

All logic lives in `modelserver.kinds.crystal`; this file only tells TorchServe which
model kind the archive holds.
"""

from modelserver.kinds.crystal import load_crystal_runtime
from modelserver.serving.torchserve_adapter import TorchServeAdapter


class CrystalHandler(TorchServeAdapter):
    """Serves one crystal model; the `handler:` config says which framework."""

    load_runtime = staticmethod(load_crystal_runtime)
