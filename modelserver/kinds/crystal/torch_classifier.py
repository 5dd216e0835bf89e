"""PyTorch crystal classifiers: the brief's MLP, rebuilt from a state_dict of tensors only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelserver.errors import ConfigError


class CrystalNet(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear-softmax with the brief's layer names."""

    def __init__(self, n_features: int = 4, hidden: int = 50, n_classes: int = 3) -> None:
        super().__init__()
        self.layer1 = nn.Linear(n_features, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.layer3 = nn.Linear(hidden, n_classes)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Class probabilities; the softmax is part of the model, as in the brief."""
        hidden = torch.relu(self.layer2(torch.relu(self.layer1(rows))))
        return torch.softmax(self.layer3(hidden), dim=1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> CrystalNet:
        """Size the layers from the tensors, then load them strictly."""
        try:
            hidden, n_features = state["layer1.weight"].shape
            n_classes = state["layer3.weight"].shape[0]
        except (KeyError, AttributeError, ValueError) as error:
            raise ConfigError(f"not a crystal MLP state_dict (missing {error})") from None
        net = cls(int(n_features), int(hidden), int(n_classes))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ConfigError(f"state_dict does not fit the crystal MLP: {error}") from None
        return net.eval()


class TorchClassifier:
    """Adapts a `CrystalNet` to the crystal `Classifier`."""

    def __init__(self, net: CrystalNet) -> None:
        self._net = net
        self._dtype = net.layer1.weight.dtype
        self.n_features = net.layer1.in_features
        self.n_classes = net.layer3.out_features

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities as float64, one row per input row."""
        with torch.inference_mode():
            return self._net(torch.from_numpy(rows).to(self._dtype)).double().numpy()


def load(path: Path, threads: int) -> TorchClassifier:
    """Load a state_dict with `weights_only=True`: tensors only, never pickled code."""
    torch.set_num_threads(threads)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file or pickled objects: fail the load, say why
        raise ConfigError(f"cannot load {path.name} as a state_dict: {error}") from error
    if not isinstance(state, dict):
        raise ConfigError(f"{path.name} holds a {type(state).__name__}, not a state_dict")
    return TorchClassifier(CrystalNet.from_state_dict(state))
