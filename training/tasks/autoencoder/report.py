"""The autoencoder report after training: the threshold, the share of inputs it flags, and two figures."""

from __future__ import annotations

import numpy as np

from training.tasks.autoencoder.score import scores_of


def report(cfg, model, data, calibration):
    """Logs the calibrated threshold, the share of inputs it flags, and two figures.

    Figures: originals beside their reconstructions (test inputs, else validation), and the histogram of the
    validation scores with the threshold.

    Args:
        cfg: the run config.
        model: the trained autoencoder.
        data: the task's `Data`.
        calibration: what `score.calibrate` returned.

    Returns:
        `(metrics, {"reconstructions.png": figure, "anomaly_scores.png": figure})`.
    """
    metrics = {"anomaly_threshold": calibration["threshold"],
               "val_anomaly_rate": float(np.mean(calibration["val_scores"] > calibration["threshold"])),
               "val_reconstruction_mse": float(np.mean(calibration["val_errors"]))}
    shown = data.test if data.test is not None else data.validation
    if data.test is not None:
        scores, errors = scores_of(cfg, model, data, data.test, calibration)
        metrics["test_anomaly_rate"] = float(np.mean(scores > calibration["threshold"]))
        metrics["test_reconstruction_mse"] = float(np.mean(errors))
    inputs = np.concatenate([x.numpy() for x, _ in shown])
    x = inputs[np.linspace(0, len(inputs) - 1, min(8, len(inputs))).astype(int)]  # spread over the set (often sorted by class)
    reconstruction = np.asarray(model(x, training=False))
    figures = {"reconstructions.png": reconstruction_figure(x, reconstruction, data),
               "anomaly_scores.png": score_histogram(calibration["val_scores"], calibration["threshold"], cfg.anomaly)}
    return metrics, figures


def reconstruction_figure(originals, reconstructions, data):
    """Frames: originals on top, reconstructions below. Feature rows: both as heat maps (standardised units).

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    if data.kind == "frames":
        fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
        for i in range(n):
            for row, images in enumerate((originals, reconstructions)):
                axes[row, i].imshow(np.clip(images[i], 0, 1))
                axes[row, i].axis("off")
        axes[0, 0].set_title("original", fontsize=8, loc="left")
        axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(8, 0.6 + 0.3 * n), squeeze=False)
        limit = max(float(np.abs(originals).max()), 1e-6)
        for ax, values, title in zip(axes[0], (originals, reconstructions), ("original", "reconstruction")):
            ax.imshow(values, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
            ax.set_title(f"{title} (standardised)", fontsize=9)
            ax.set_xlabel("feature")
            ax.set_ylabel("row")
    fig.tight_layout()
    return fig


def score_histogram(scores, threshold, anomaly_cfg):
    """The histogram of validation scores with the threshold marked.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(scores, bins=min(50, max(10, len(scores) // 5)), color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g} "
               f"({anomaly_cfg.threshold_percentile:g}th percentile)")
    ax.set_xlabel(f"anomaly score ({anomaly_cfg.score})")
    ax.set_ylabel("validation inputs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
