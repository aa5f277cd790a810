"""Ranking quality: where the held-out item lands among its candidates, HR@K and NDCG@K.

Ties count against the model: a candidate scoring the same as the held-out
item ranks above it, so a model that cannot tell items apart earns nothing.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def held_out_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of the held-out item in column 0 among its row; ties are counted against it."""
    return (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


class RankingMetric(keras.metrics.Metric):
    """HR@K (`hit`) or NDCG@K (`ndcg`) of the held-out item among each row's candidates.

    `update_state(relevance [B, C], scores [B, C])`: the held-out item is the
    one with relevance > 0. A candidate scoring the same as the held-out item
    ranks above it (ties count against the model: constant scores score 0).
    """

    def __init__(self, k: int, kind: str, name=None, **kwargs):
        super().__init__(name=name or f"{'hr' if kind == 'hit' else 'ndcg'}_at_{k}", **kwargs)
        self.k, self.kind = k, kind
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        held = tf.cast(y_true, tf.float32) > 0
        scores = tf.cast(y_pred, tf.float32)
        held_score = tf.reduce_sum(tf.where(held, scores, 0.0), axis=-1, keepdims=True)
        rank = tf.reduce_sum(tf.cast((scores >= held_score) & ~held, tf.float32), axis=-1)
        hit = tf.cast(rank < self.k, tf.float32)
        gain = hit if self.kind == "hit" else hit * tf.math.log(2.0) / tf.math.log(rank + 2.0)
        self.total.assign_add(tf.reduce_sum(gain))
        self.count.assign_add(tf.cast(tf.shape(rank)[0], tf.float32))

    def result(self):
        return self.total / tf.maximum(self.count, 1.0)


def ranking(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """HR@K and NDCG@K from held-out ranks.

    Args:
        ranks: `[N]` int, the rank of each held-out item (0 = first), as `held_out_ranks` gives.
        k: the cut-off.

    Returns:
        `(hit rate, NDCG)`, each a mean over the N rows.
    """
    hit = ranks < k
    return float(hit.mean()), float((hit / np.log2(ranks + 2.0)).mean())


def make_metrics(cfg, data):
    """No metrics on training batches."""
    return []  # training rows hold 1 + train_negatives candidates: ranking them says little


def make_eval_metrics(cfg, data):
    """HR@K and NDCG@K for each K of `data.top_k`, on validation and test batches."""
    return [RankingMetric(k, kind) for k in cfg.data.top_k for kind in ("hit", "ndcg")]
