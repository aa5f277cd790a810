"""The frames model, its loss and its metrics: a classifier over `len(class_names)` classes."""

from __future__ import annotations

import keras
import tensorflow as tf

from models import MODELS


def build_model(cfg, data) -> keras.Model:
    """The `cfg.model.name` builder of `models.MODELS`, with one output per class of `data.class_names`.

    Args:
        cfg: the run config (`cfg.model` is passed on, with `train.l2` and `seed`).
        data: anything with `class_names`.

    Returns:
        The uncompiled Keras model: float32 pixels `[batch, size, size, 3]` -> probabilities `[batch, classes]`.
    """
    params = cfg.model.model_dump(exclude={"name"})
    return MODELS[cfg.model.name](num_classes=len(data.class_names), l2=cfg.train.l2, seed=cfg.seed, **params)


def make_loss(cfg, data):
    """Per-example cross-entropy (label smoothing needs one-hot targets).

    Returns:
        `loss(int labels [batch], probabilities [batch, classes])` -> losses `[batch]`.
    """
    crossentropy = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing, reduction=None)
    num_classes = len(data.class_names)

    def loss(y_true, y_pred):
        return crossentropy(tf.one_hot(tf.cast(y_true, tf.int32), num_classes), y_pred)

    return loss


def make_metrics(cfg, data) -> list:
    """Accuracy, the one metric of training, validation and test batches."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
