"""Default scikit-learn crystal model: a bare LogisticRegression, as in the brief."""

from __future__ import annotations

from pathlib import Path

import joblib
from sklearn.linear_model import LogisticRegression

from modelserver.training.iris_data import iris_splits


def train(output: Path) -> dict[str, float]:
    """Fit on scaled iris, save with joblib to `output`, return test accuracy."""
    train_x, test_x, train_y, test_y = iris_splits()
    model = LogisticRegression(C=10.0, max_iter=1000).fit(train_x, train_y)
    joblib.dump(model, output)
    return {"test_accuracy": float(model.score(test_x, test_y))}
