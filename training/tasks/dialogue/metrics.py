"""What a run optimises and measures: the cross-entropy of the next token, perplexity and bits per character."""

from __future__ import annotations

import keras
import tensorflow as tf

from training.tasks.dialogue.data import Data


def make_loss(cfg, data: Data):
    """Cross-entropy of the next token, in nats, averaged over each window's positions (one value per window).

    Returns:
        `loss(next_tokens int32 [B, T], logits [B, T, V])` -> float32 `[B]`.
    """

    def loss(next_tokens, logits):
        per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(next_tokens, tf.int32), tf.cast(logits, tf.float32))
        return tf.reduce_mean(per_token, axis=-1)

    return loss


class TokenCrossEntropy(keras.metrics.Metric):
    """Perplexity (`exp` of the mean cross-entropy per token) or bits per token (`nats / ln 2`).

    `update_state(next_tokens [B, T], logits [B, T, V])`; every token weighs the same.
    """

    def __init__(self, kind: str, name=None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y_true, tf.int32), tf.cast(y_pred, tf.float32))
        self.total.assign_add(tf.reduce_sum(nats))
        self.count.assign_add(tf.cast(tf.size(nats), tf.float32))

    def result(self):
        mean = self.total / tf.maximum(self.count, 1.0)
        return tf.exp(mean) if self.kind == "perplexity" else mean / tf.math.log(2.0)


def make_metrics(cfg, data: Data) -> list:
    """Training metrics: none, since the training perplexity is exp(loss) (no second softmax per step)."""
    return []


def make_eval_metrics(cfg, data: Data) -> list:
    """Validation metrics: perplexity, and bits per character for a character-level model.

    Args:
        cfg: a dialogue run config.
        data: the run's `Data` (its `level`).

    Returns:
        `TokenCrossEntropy` metrics, logged as `val_perplexity` (and `val_bits_per_char`).
    """
    metrics = [TokenCrossEntropy("perplexity")]
    if data.level == "char":
        metrics.append(TokenCrossEntropy("bits", name="bits_per_char"))
    return metrics
