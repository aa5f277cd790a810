"""What is trained: the model of `models/ncf.py` named by `model.name`, built with its config keys, and its loss."""

from __future__ import annotations

import keras
import tensorflow as tf

from models import MODELS
from training.tasks.recommender.pretrain import load_pretrained

# The `model.*` keys each builder takes, passed by their names. Every builder also takes what the data gives
# (`num_users`, `num_items`), `l2` (`train.l2`) and `seed` (the run's); each builder refuses any other keyword.
BUILDER_KEYS = {
    "gmf": ("factors", "embedding_l2"),
    "mf": ("factors", "embedding_l2"),
    "mlp": ("mlp_layers", "embedding_l2"),
    "neumf": ("factors", "mlp_layers", "embedding_l2"),
    "seed_cf": ("mlp_layers",),
}


def build_model(cfg, data) -> keras.Model:
    """The NCF model of `cfg.model.name` over the split's users and items; NeuMF may start from GMF and MLP runs.

    Args:
        cfg: the run config.
        data: the task's `Data` (user and item counts, the fingerprint for pretraining).

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.
    """
    m = cfg.model
    keys = {key: getattr(m, key) for key in BUILDER_KEYS[m.name]}
    model = MODELS[m.name](num_users=data.split.num_users, num_items=data.split.num_items, l2=cfg.train.l2, seed=cfg.seed,
                           **keys)
    if m.pretrain_gmf:
        load_pretrained(cfg, model, data)
    return model


def logits_of(probabilities):
    """The logits behind a model's sigmoid output: read from the graph when the sigmoid is the last op, else log-odds."""
    if getattr(probabilities, "op", None) is not None and probabilities.op.type == "Sigmoid":
        return probabilities.op.inputs[0]
    p = tf.clip_by_value(probabilities, 1e-7, 1 - 1e-7)
    return tf.math.log(p) - tf.math.log1p(-p)


def make_loss(cfg, data):
    """The training loss of `model.loss` per user row, times the positive's weight.

    `bce`: binary cross-entropy, the mean over the row's candidates. `softmax`:
    cross-entropy of one softmax over the row (the positive first, then its
    sampled negatives), so the positive is pushed above exactly the items it is
    ranked against.

    Returns:
        `loss(relevance [B, C], probabilities [B, C])` -> `[B]`.
    """
    softmax = cfg.model.loss == "softmax"

    def loss(relevance, y_pred):
        relevance = tf.cast(relevance, tf.float32)
        weight = tf.reduce_max(relevance, axis=-1)
        labels = tf.cast(relevance > 0, tf.float32)
        if softmax:
            logits = tf.cast(logits_of(y_pred), tf.float32)
            return tf.nn.softmax_cross_entropy_with_logits(labels / tf.reduce_sum(labels, -1, keepdims=True), logits) * weight
        return keras.losses.binary_crossentropy(labels, tf.cast(y_pred, tf.float32)) * weight

    return loss
