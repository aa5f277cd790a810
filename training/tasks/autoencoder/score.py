"""The anomaly score and its calibration: error statistics, the score, the threshold fitted after training.

The anomaly score (`anomaly.score`):
- `mse`: the mean squared reconstruction error of the scaled input;
- `typicality`: how far the way the reconstruction misses the input lies from the
  way it misses the training inputs: the Mahalanobis distance of a few error
  statistics (`error_statistics`: the error's size, its spread over pixels,
  blocks and colour channels, the detail the autoencoder loses) from their
  training mean, divided by the square root of their number. Two-sided: an error
  far *below* the usual one means a frame with too little detail, such as a
  black or heavily blurred frame, which an autoencoder rebuilds all too well. A
  typical input scores about 1.

`calibrate` fits the statistics on the training inputs and the threshold on the
validation inputs; its result is the task's `calibration`, stored in the export.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from training.tasks.autoencoder.model import per_input_mse

_EPS = 1e-8


def _log(x):
    return tf.math.log(x + _EPS)


def _detail(images):
    """Mean absolute difference between neighbouring pixels: how much fine detail a frame holds."""
    return (tf.reduce_mean(tf.abs(images[:, 1:] - images[:, :-1]), axis=[1, 2, 3])
            + tf.reduce_mean(tf.abs(images[:, :, 1:] - images[:, :, :-1]), axis=[1, 2, 3]))


def error_statistics(x, reconstruction, kind):
    """What the typicality score looks at: `[batch, statistics]`, the logs of how the reconstruction misses its input.

    Every input: the mean squared and mean absolute error, and how the error is spread (its 99th percentile for
    frames, its largest feature error for rows). Frames also: the error of the worst colour channel and of the worst
    channel per pixel against the mean (a dropped or wrong channel), the spread of the error over 8x8 blocks (local
    damage such as broken JPEG blocks), the frame's own detail and the detail the autoencoder loses (black and
    blurred frames hold almost none and lose nothing).

    Args:
        x: scaled inputs, `[batch, ...]`.
        reconstruction: the model's output for them, the same shape.
        kind: `frames` or `table`.

    Returns:
        float32 `[batch, 3]` for rows, `[batch, 9]` for frames.
    """
    x, reconstruction = tf.cast(x, tf.float32), tf.cast(reconstruction, tf.float32)
    squared = tf.square(x - reconstruction)
    batch = tf.shape(squared)[0]
    flat = tf.reshape(squared, [batch, -1])
    mse = tf.reduce_mean(flat, axis=1)
    stats = [_log(mse), _log(tf.reduce_mean(tf.abs(tf.reshape(x - reconstruction, [batch, -1])), axis=1))]
    if kind == "table":
        return tf.stack(stats + [_log(tf.reduce_max(flat, axis=1))], axis=1)
    top = max(1, math.prod(squared.shape[1:]) // 100)  # frames have a static size here: resized first
    per_channel = tf.reduce_mean(squared, axis=[1, 2])
    blocks = tf.nn.avg_pool2d(tf.reduce_mean(squared, axis=-1, keepdims=True), 8, 8, "VALID")
    stats += [
        _log(tf.math.top_k(flat, top).values[:, -1]),  # 99th percentile of the squared error
        _log(tf.reduce_max(per_channel, axis=1)) - _log(tf.reduce_mean(per_channel, axis=1)),
        _log(tf.reduce_mean(tf.reduce_max(squared, axis=-1), axis=[1, 2])) - _log(mse),
        _log(tf.math.reduce_std(tf.reshape(blocks, [batch, -1]), axis=1)) - _log(mse),
        _log(tf.reduce_max(tf.reshape(blocks, [batch, -1]), axis=1)),
        _log(_detail(x)),
        _log(_detail(x)) - _log(_detail(reconstruction)),
    ]
    return tf.stack(stats, axis=1)


def anomaly_scores(kind, mse, statistics, mean, precision):
    """The anomaly score of each input.

    Args:
        kind: `mse` (the mean squared error) or `typicality` (the Mahalanobis distance of the error statistics
            from the training inputs', divided by the square root of their number: a typical input scores about 1).
        mse: per-input mean squared errors `[batch]`.
        statistics: `error_statistics`, `[batch, k]`.
        mean: the training inputs' mean statistics `[k]`.
        precision: the inverse of their covariance `[k, k]`.

    Returns:
        float32 scores `[batch]`.
    """
    if kind == "mse":
        return mse
    centred = statistics - mean
    d2 = tf.reduce_sum(tf.matmul(centred, precision) * centred, axis=1)
    return tf.sqrt(tf.maximum(d2, 0.0) / tf.cast(tf.shape(statistics)[1], tf.float32))


def analyse(model, x, kind):
    """`(code, reconstruction, per-input mse, error statistics)` of scaled inputs, all float32."""
    code = tf.cast(model.get_layer("encoder")(x, training=False), tf.float32)
    reconstruction = tf.cast(model.get_layer("decoder")(code, training=False), tf.float32)
    return code, reconstruction, per_input_mse(x, reconstruction), error_statistics(x, reconstruction, kind)


def _statistics_of(model, dataset, kind):
    step = tf.function(lambda x: analyse(model, x, kind)[2:], reduce_retracing=True)
    mses, stats = zip(*[[t.numpy() for t in step(x)] for x, _ in dataset])
    return np.concatenate(mses), np.concatenate(stats)


def calibrate(cfg, model, data) -> dict:
    """Fits the score on the training inputs, then sets the threshold on the validation inputs.

    The typicality score's mean and (slightly regularised, always invertible) covariance of the error statistics
    come from the training inputs; the threshold is the `anomaly.threshold_percentile` percentile of the validation
    inputs' scores. Called once after training (and by `reelml export`); what it returns is passed to the report
    and the export, which stores it.

    Args:
        cfg: the run config (`cfg.anomaly`).
        model: the trained autoencoder.
        data: the task's `Data` (`reference` and `validation` are read).

    Returns:
        `{"mean": [k], "precision": [k, k], "threshold": float, "val_scores": [n], "val_errors": [n]}`.
    """
    # The training inputs as they are, in a fixed order: the same statistics in every process and every run.
    _, train_stats = _statistics_of(model, data.reference, data.kind)
    cov = np.atleast_2d(np.cov(train_stats.astype(np.float64), rowvar=False))
    cov += 1e-3 * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
    mean, precision = train_stats.mean(axis=0).astype(np.float32), np.linalg.inv(cov).astype(np.float32)
    val_mse, val_stats = _statistics_of(model, data.validation, data.kind)
    val_scores = anomaly_scores(cfg.anomaly.score, tf.constant(val_mse), tf.constant(val_stats), mean, precision).numpy()
    threshold = float(np.percentile(val_scores.astype(np.float64), cfg.anomaly.threshold_percentile))
    return {"mean": mean, "precision": precision, "threshold": threshold, "val_scores": val_scores, "val_errors": val_mse}


def scores_of(cfg, model, data, dataset, calibration):
    """`(scores, mse)` of every input of a dataset, with the calibrated score.

    Args:
        cfg: the run config.
        model: the trained autoencoder.
        data: the task's `Data`.
        dataset: batches of `(x, x)`.
        calibration: what `calibrate` returned.

    Returns:
        Two numpy arrays `[n]`.
    """
    mse, stats = _statistics_of(model, dataset, data.kind)
    scores = anomaly_scores(cfg.anomaly.score, tf.constant(mse), tf.constant(stats), calibration["mean"], calibration["precision"])
    return scores.numpy(), mse
