"""scikit-learn's digits: 1,797 real 8x8 handwritten digits (10 classes), shipped inside the package."""

from __future__ import annotations

import numpy as np


def load() -> tuple[np.ndarray, np.ndarray]:
    """Grey levels (N, 8, 8) float64 in 0..16 and labels (N,) int64, as scikit-learn ships them."""
    from sklearn.datasets import load_digits  # imported here: only `prepare` loads the data (1 s)

    x, y = load_digits(return_X_y=True)
    return x.reshape(-1, 8, 8), y.astype(np.int64)
