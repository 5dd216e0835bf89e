"""The TorchServe handler of every archive, whatever the model kind.

All logic lives in `modelserver`: the archive's model-config.yaml names the kind, and
`modelserver.kinds.registry` loads it. TorchServe wants one class per handler file: this one.
"""

from modelserver.serving.torchserve_adapter import TorchServeAdapter


class ModelHandler(TorchServeAdapter):
    """Serves one model of any registered kind."""
