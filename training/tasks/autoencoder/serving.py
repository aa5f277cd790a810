"""The autoencoder export: the served layer (scaling, score and threshold inside), its signatures, `reelml.json`.

Signatures: `is_anomaly` (also `serving_default`), `anomaly_score`, `encode`,
`reconstruct`; frames go in as encoded JPEG/PNG bytes (any size: resized inside)
and, for video, as decoded pixels (`analyse_pixels`, every output); feature rows
as float32 `features` in the table's own units.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from training.tasks.autoencoder.score import analyse, anomaly_scores
from training.tasks.images import decode_images, not_empty


class ServedAutoencoder(keras.layers.Layer):
    """The served autoencoder: raw inputs in (frames in [0, 255], feature rows in their own units), the trained
    model, the scaling, the score's statistics and the calibrated threshold inside, as variables."""

    def __init__(self, model, kind, score, calibration, mean=None, std=None):
        super().__init__(name="served_autoencoder")
        self.model, self.kind, self.score_kind = model, kind, score
        constant = lambda value, name: tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)  # noqa: E731
        self.threshold = constant(calibration["threshold"], "threshold")
        self.statistics_mean = constant(calibration["mean"], "statistics_mean")
        self.statistics_precision = constant(calibration["precision"], "statistics_precision")
        if kind == "table":
            self.mean, self.std = constant(mean, "feature_mean"), constant(std, "feature_std")
        self.built = True

    def _scale(self, x):
        x = tf.cast(x, tf.float32)
        return (x - self.mean) / self.std if self.kind == "table" else x / 255.0

    def _unscale(self, y):
        if self.kind == "table":
            return y * self.std + self.mean
        # Float pixels in [0, 255], not rounded to uint8: rounding would make the output jump by a whole level
        # where float noise crosses .5 (an export reloaded elsewhere must give the same answer).
        return tf.clip_by_value(y * 255.0, 0.0, 255.0)

    def analyse(self, raw):
        """Every output for a batch of raw inputs (frames already resized); an empty batch gives empty outputs."""
        raw, n = not_empty(raw)  # some kernels fail on a batch of none
        code, reconstruction, mse, statistics = analyse(self.model, self._scale(raw), self.kind)
        score = anomaly_scores(self.score_kind, mse, statistics, self.statistics_mean, self.statistics_precision)
        outputs = {"embedding": code, "reconstruction": self._unscale(reconstruction), "reconstruction_error": mse,
                   "score": score, "is_anomaly": score > self.threshold,
                   "threshold": tf.fill(tf.shape(score), tf.convert_to_tensor(self.threshold))}
        return {k: v[:n] for k, v in outputs.items()}


_OUTPUTS = {
    "is_anomaly": ("is_anomaly", "score", "threshold"),
    "anomaly_score": ("score", "reconstruction_error"),
    "encode": ("embedding",),
    "reconstruct": ("reconstruction",),
}


def export_metadata(cfg, data, calibration) -> dict:
    """What `assets.extra/reelml.json` records for `reelml predict`: the input kind and features, the code size, the
    score (the threshold itself is a variable of the SavedModel: `is_anomaly` returns it)."""
    meta = {"input": data.kind, "input_shape": list(data.input_shape), "code_size": cfg.model.code_size,
            "anomaly_score": cfg.anomaly.score, "threshold_percentile": cfg.anomaly.threshold_percentile}
    if data.kind == "table":
        meta.update(feature_columns=data.feature_names, id_column=data.id_column)
    return meta


def serving_endpoints(cfg, model, data, calibration):
    """What the export tracks (the `ServedAutoencoder` layer) and its signatures.

    `is_anomaly` comes first, so it is also `serving_default`. Frames: each signature takes encoded JPEG/PNG bytes
    (`images`, any size: decoded to RGB and resized to `data.image_size` inside), and `analyse_pixels` takes decoded
    uint8 frames of any size and returns every output. Feature rows: each takes `features`, float32
    `[batch, len(feature_columns)]` in the table's own units.

    Args:
        cfg: the run config.
        model: the trained autoencoder.
        data: the task's `Data`.
        calibration: what `score.calibrate` returned (statistics and threshold, stored as variables).

    Returns:
        `(served layer, {signature name: (fn, [TensorSpec])})`.
    """
    served = ServedAutoencoder(model, data.kind, cfg.anomaly.score, calibration, data.mean, data.std)

    if data.kind == "table":
        def on_features(keys):
            def endpoint(features):
                # Signatures do not check the shape of what they are given: say clearly what was expected.
                outputs = served.analyse(tf.ensure_shape(features, [None, len(data.feature_names)], name="features"))
                return {k: outputs[k] for k in keys}
            return endpoint

        spec = [tf.TensorSpec([None, len(data.feature_names)], tf.float32, name="features")]
        return served, {name: (on_features(keys), spec) for name, keys in _OUTPUTS.items()}

    size = cfg.data.image_size

    def from_images(images):
        images = tf.ensure_shape(images, [None], name="images")
        return served.analyse(decode_images(images, size))

    def from_pixels(pixels):
        pixels = tf.ensure_shape(pixels, [None, None, None, 3], name="pixels")
        pixels, n = not_empty(pixels)  # [0, 0, 0, 3] cannot be resized
        outputs = served.analyse(tf.image.resize(tf.cast(pixels, tf.float32), (size, size), antialias=True))
        return {k: v[:n] for k, v in outputs.items()}

    def on_images(keys):
        def endpoint(images):
            outputs = from_images(images)
            return {k: outputs[k] for k in keys}
        return endpoint

    spec = [tf.TensorSpec([None], tf.string, name="images")]
    endpoints = {name: (on_images(keys), spec) for name, keys in _OUTPUTS.items()}
    endpoints["analyse_pixels"] = (from_pixels, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    return served, endpoints


def verification_inputs(cfg, data):
    """A few real inputs, as each signature takes them (frames also at another size), to check the export."""
    x = next(iter(data.validation.unbatch().batch(4)))[0].numpy()
    if data.kind == "table":
        features = x * data.std + data.mean
        return {name: {"features": features} for name in _OUTPUTS}
    pixels = np.round(x * 255).astype(np.uint8)
    images = [tf.io.encode_png(p).numpy() for p in pixels] + [tf.io.encode_jpeg(np.repeat(pixels[0], 2, axis=0)).numpy()]
    return {**{name: {"images": images} for name in _OUTPUTS}, "analyse_pixels": {"pixels": pixels}}
