"""Default PyTorch crystal model: the brief's MLP, saved as a plain state_dict."""

from __future__ import annotations

from pathlib import Path

import torch

from modelserver.kinds.crystal.torch_classifier import CrystalNet
from modelserver.training.iris_data import iris_splits


def train(output: Path, epochs: int = 400, seed: int = 0) -> dict[str, float]:
    """Full-batch Adam on scaled iris, save the float32 state_dict, return accuracy.

    Trained in float64: in float32 the 400 steps amplify one rounding difference (1e-7) into
    scores 0.08 apart, so CPUs with other vector units trained other models; in float64 the
    same amplification leaves them equal to 1e-12, and every machine serves the same answers.
    """
    torch.manual_seed(seed)
    train_x, test_x, train_y, test_y = (torch.as_tensor(a) for a in iris_splits(seed))
    net = CrystalNet().double()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    inputs, targets = train_x.double(), train_y.long()
    for _ in range(epochs):
        optimiser.zero_grad()
        # The model ends in softmax (as the brief's does), so train on log-probabilities.
        loss = torch.nn.functional.nll_loss(torch.log(net(inputs) + 1e-12), targets)
        loss.backward()
        optimiser.step()
    net = net.float().eval()
    torch.save(net.state_dict(), output)
    with torch.inference_mode():
        accuracy = (net(test_x.float()).argmax(dim=1) == test_y).float().mean()
    return {"test_accuracy": float(accuracy)}
