"""The model of a run: `models.MODELS[model.name]` built from the config and the vocabulary, and, for
`data.stateful`, the same model reading parallel streams of text with its state carried across windows.

Stateful truncated backpropagation through time (`Streams`): each row of a
batch continues the stream of text the same row read in the batch before, so
the recurrent state at the end of one window is the start of the next.
Gradients stop at the window's start; the state is zeroed where a batch says
so (the first batch of each epoch, and of each validation pass). The states
live in variables of each replica (its rows only) and are not checkpointed:
a run resumed mid-epoch (after SIGTERM) restarts its streams from zero at the
step it resumes from. Serving, generation and the report use the plain model
(`language_model`), whose weights are the same.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from models import MODELS
from models.dialogue_rnn import state_sizes, stream_model
from training.tasks.dialogue.data import Data
from training.errors import UserError


class _States:
    """The per-replica state variables, kept out of Keras' and the checkpoint's tracking (they are per replica,
    their shape depends on the number of replicas, and a resume starts the streams over)."""

    def __init__(self, variables):
        self.variables = variables


class Streams(keras.Model):
    """A dialogue model that carries its recurrent states from one batch to the next, row by row.

    Args:
        language_model: a model built by `models.dialogue_rnn.build_dialogue_rnn`.
        rows: batch rows per replica (`data.batch_size` / replicas): the parallel streams each replica reads.

    Call:
        `{"tokens": int32 [rows, T], "reset": bool [rows]}` -> logits `[rows, T, V]`; a row with `reset`
        starts from a zero state, the others from the state the previous call left.
    """

    def __init__(self, language_model, rows: int, **kwargs):
        super().__init__(name=f"{language_model.name}_stateful", **kwargs)
        self.language_model = language_model
        self.forward = stream_model(language_model)
        self.rows = rows
        strategy = tf.distribute.get_strategy()
        with strategy.scope():  # one copy per replica, each updated by its replica alone
            self._states = _States([
                tf.Variable(tf.zeros([rows, size]), trainable=False, name=f"stream_state_{i}",
                            synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.SUM)
                for i, size in enumerate(s for sizes in state_sizes(language_model) for s in sizes)
            ])

    def call(self, inputs, training=False):
        tokens, reset = inputs["tokens"], inputs["reset"]
        keep = 1.0 - tf.cast(tf.reshape(reset, [-1, 1]), tf.float32)
        states = [v.read_value() * keep for v in self._states.variables]
        logits, *final = self.forward([tokens, *states], training=training)
        for variable, state in zip(self._states.variables, final):
            variable.assign(tf.stop_gradient(tf.cast(state, tf.float32)))
        return logits


def language_model(model) -> keras.Model:
    """The plain language model (tokens in, logits out) of a run's model, stateful or not."""
    return model.language_model if isinstance(model, Streams) else model


def build_model(cfg, data: Data) -> keras.Model:
    """Builds the language model: every `model` key by name, the vocabulary size from the data.

    Args:
        cfg: a dialogue run config (`cfg.model`, `cfg.train.l2`, `cfg.seed`, `cfg.data.stateful`).
        data: the run's `Data`: the vocabulary, plus the unknown token, sizes the embedding and the logits.

    Returns:
        A `keras.Model` mapping int32 tokens `[B, T]` to float32 next-token logits `[B, T, vocab_size]`; with
        `data.stateful`, a `Streams` around it, reading `{"tokens", "reset"}` batches.
    """
    m = cfg.model
    model = MODELS[m.name](vocab_size=len(data.vocabulary) + 1, cell=m.cell, units=m.units, embedding_dim=m.embedding_dim,
                           activation=m.activation, dropout=m.dropout, l2=cfg.train.l2, seed=cfg.seed)
    if not cfg.data.stateful:
        return model
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if cfg.data.batch_size % replicas:
        raise UserError(f"data.batch_size {cfg.data.batch_size}: data.stateful gives each of the {replicas} replicas "
                        "the same number of streams; expected a multiple of the replicas")
    return Streams(model, cfg.data.batch_size // replicas)
