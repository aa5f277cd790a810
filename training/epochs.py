"""Which epoch the input pipelines are in, so per-epoch randomness survives a restart.

A `tf.data` pipeline that reshuffles "on every new iterator" starts again from
its first order in a resumed process, so a run killed in epoch 7 would replay
epoch 1's order and negatives. Pipelines here draw their per-epoch randomness
from `epoch_seeds(seed)` instead: a seed that is a function of the run's seed
and the epoch the training loop is in (`set_epoch`), so a resumed epoch sees
exactly the batches it saw before, on one device and on every worker.
"""

from __future__ import annotations

import tensorflow as tf

# A module global, on purpose (the one piece of shared state in the spine): the training loop owns the
# epoch (`set_epoch`), the pipelines only read it, and there is one loop per process. Passing it instead
# would thread one more argument through `Task.load_data` and every dataset builder of every task (and
# their tests and benchmarks) only to reach the same single variable, which the tf.data graphs capture
# when they are built; a task that forgets it would silently replay epoch 1's order after a restart.
_EPOCH: tf.Variable | None = None


def _epoch_variable() -> tf.Variable:
    global _EPOCH
    if _EPOCH is None:
        with tf.init_scope():
            _EPOCH = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")
    return _EPOCH


def set_epoch(epoch: int) -> None:
    """Called by the training loop before it starts iterating epoch `epoch` (0-based)."""
    _epoch_variable().assign(epoch)


def epoch_seeds(seed: int) -> tf.data.Dataset:
    """A one-element dataset: an int64 seed for the current epoch's randomness.

    Read when an iterator starts, so `epoch_seeds(seed).flat_map(make_epoch)`
    builds each epoch from its own seed.

    Example:

    >>> ds = epoch_seeds(1234).flat_map(lambda s: frames.shuffle(1000, seed=s))
    """
    epoch = _epoch_variable()
    return tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64)).map(lambda s: s * 1_000_003 + epoch.read_value())
