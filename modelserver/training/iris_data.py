"""The data behind the default crystal models: scikit-learn's bundled iris set.

Four measurements and three classes, like the brief's crystals. Features are min-max scaled
to [0, 1] so the brief's sample rows (values in [0, 1]) fall inside the training range;
classes setosa, versicolor, virginica become labels 0, 1, 2 (blue, green, yellow).
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split


def iris_splits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scaled (train X, test X, train y, test y), stratified 80/20."""
    features, labels = load_iris(return_X_y=True)
    low, high = features.min(axis=0), features.max(axis=0)
    scaled = (features - low) / (high - low)
    return train_test_split(scaled, labels, test_size=0.2, random_state=seed, stratify=labels)
