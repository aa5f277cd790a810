"""The autoencoder model, its loss and its metrics: a conv or dense autoencoder rebuilding its (clean) input."""

from __future__ import annotations

import keras
import tensorflow as tf

from models import MODELS


def build_model(cfg, data) -> keras.Model:
    """The `cfg.model.name` autoencoder of `models.MODELS` for `data.input_shape`.

    `model.output_activation: auto` is a sigmoid for frames (in [0, 1]) and linear for
    standardised feature rows.

    Returns:
        The uncompiled model, with `encoder` and `decoder` sub-models: x -> reconstruction of x's shape.
    """
    m = cfg.model
    output = m.output_activation if m.output_activation != "auto" else ("sigmoid" if data.kind == "frames" else "linear")
    common = {"input_shape": data.input_shape, "code_size": m.code_size, "noise_stddev": m.noise_stddev,
              "code_activation": m.code_activation, "output_activation": output, "l2": cfg.train.l2, "seed": cfg.seed}
    if m.name == "conv_autoencoder":
        return MODELS[m.name](filters=m.filters, convs_per_block=m.convs_per_block, kernel_size=m.kernel_size,
                              batch_norm=m.batch_norm, **common)
    return MODELS[m.name](hidden_units=m.hidden_units, decoder_units=m.decoder_units, **common)


def per_input_mse(y_true, y_pred):
    """The mean squared error of each input of a batch: `[batch, ...]` twice -> `[batch]` (float32)."""
    axes = list(range(1, len(y_pred.shape)))
    return tf.reduce_mean(tf.square(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)), axis=axes)


def make_loss(cfg, data):
    """Per-input mean squared error between the (clean) input and its reconstruction (denoising adds noise inside the model)."""
    return per_input_mse


def make_metrics(cfg, data) -> list:
    """The mean absolute reconstruction error."""
    return [keras.metrics.MeanAbsoluteError(name="mae")]
