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


def make_loss(cfg, data):
    """Binary cross-entropy per user row (mean over its candidates), times the positive's weight.

    Returns:
        `loss(relevance [B, C], probabilities [B, C])` -> `[B]`.
    """

    def loss(relevance, y_pred):
        relevance = tf.cast(relevance, tf.float32)
        labels = tf.cast(relevance > 0, tf.float32)
        return keras.losses.binary_crossentropy(labels, tf.cast(y_pred, tf.float32)) * tf.reduce_max(relevance, axis=-1)

    return loss
