"""Regenerate the shipped sample dataset ``wciaudit/samples/digits.npz``.

The UCI handwritten digits (8x8 grey images, 10 classes, 1797 examples) come with
scikit-learn, so nothing is downloaded. Pixels 0..16 are scaled to [0, 1]; a seeded
stratified split gives 1000 train and 797 test examples. Needs ``scikit-learn``.

    python scripts/make_sample_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parents[1] / "wciaudit" / "samples" / "digits.npz"


def main() -> None:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=1000, stratify=y, random_state=0
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=np.array([str(i) for i in range(10)]),
    )
    print(f"wrote {OUT.name}: train {x_train.shape}, test {x_test.shape}")


if __name__ == "__main__":
    main()
