"""The frames report after training: per-class test accuracy and the confusion matrix figure."""

from __future__ import annotations

import numpy as np


def report(cfg, model, data, calibration=None):
    """Test metrics beyond the loop's: per-class accuracy and a confusion matrix figure.

    Uses the test split, else the validation split (then the metrics are `val_accuracy_<class>`); neither: nothing.

    Returns:
        `({"test_accuracy_<class>": float}, {"confusion_matrix.png": figure})`.
    """
    ds, split = (data.test, "test") if data.test is not None else (data.validation, "val")
    if ds is None:
        return {}, {}
    y_true = np.concatenate([y.numpy() for _, y in ds])
    y_pred = np.argmax(model.predict(ds.map(lambda x, y: x), verbose=0), axis=-1)
    n = len(data.class_names)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    metrics = {f"{split}_accuracy_{name}": float(acc) for name, acc in zip(data.class_names, per_class)}
    figure = confusion_figure(confusion, data.class_names, "test" if split == "test" else "validation")
    return metrics, {"confusion_matrix.png": figure}


def confusion_figure(confusion, class_names, split="test"):
    """A matplotlib figure of a confusion matrix (rows: true class, columns: predicted), counts in the cells.

    Args:
        confusion: int array `[classes, classes]`.
        class_names: the axis labels.
        split: what the frames are, for the title (`test`, `validation`).

    Returns:
        The figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    accuracy = confusion.trace() / max(confusion.sum(), 1)
    ax.set_title(f"{split} accuracy {accuracy:.3f} ({confusion.sum()} frames)")
    fig.tight_layout()
    return fig
