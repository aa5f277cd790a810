"""The data of a run: the text read, split and tokenized, as tf.data windows of tokens and their next tokens.

Training windows are `seq_len` tokens and their next tokens, cut at a new
random offset and shuffled every epoch (seeded, through `training.epochs`);
validation windows are consecutive. Batches are `(tokens int32 [B, T], next
tokens int32 [B, T])`.

With `data.stateful`, training and validation text are read instead as B
parallel streams (`stream_dataset`): row b of every batch continues row b of
the batch before, and batches are `({"tokens": [B, T], "reset": bool [B]},
next tokens [B, T])`, `reset` marking where a stream starts.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow as tf

from training.epochs import epoch_seeds
from training.errors import UserError
from training.tasks.base import TaskData
from training.tasks.dialogue.text import read_text, split_text
from training.tasks.dialogue.tokens import build_vocabulary, encode, tokenize

AUTOTUNE = tf.data.AUTOTUNE


def train_dataset(ids: np.ndarray, seq_len: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Training windows: `seq_len` tokens and their next tokens, non-overlapping, from a new random offset
    and in a new order every epoch (the same ones for an epoch redone after a restart)."""
    windows = len(ids) // seq_len - 1
    tokens = tf.constant(ids)
    positions = tf.range(seq_len + 1, dtype=tf.int64)

    def cut(starts):
        w = tf.gather(tokens, starts[:, None] + positions[None, :])
        return w[:, :-1], w[:, 1:]

    def epoch(epoch_seed):
        offset = tf.random.stateless_uniform([], tf.stack([epoch_seed, 0]), maxval=seq_len, dtype=tf.int64)
        starts = offset + tf.range(windows, dtype=tf.int64) * seq_len
        starts = tf.random.experimental.stateless_shuffle(starts, tf.stack([epoch_seed, 1]))
        return tf.data.Dataset.from_tensor_slices(starts).batch(batch_size, drop_remainder=True).map(cut, num_parallel_calls=AUTOTUNE)

    return epoch_seeds(seed).flat_map(epoch).prefetch(AUTOTUNE)


def stream_dataset(ids: np.ndarray, seq_len: int, rows: int, seed: int | None) -> tuple[tf.data.Dataset, int]:
    """Batches of `rows` parallel streams through the text, for stateful training and validation.

    The text (from an offset drawn anew every epoch when `seed` is given, else from its start) is cut into
    `rows` contiguous streams of equal length; batch j holds the j-th window of `seq_len` tokens of every
    stream, so each row continues the row before it. `reset` is true in an epoch's first batch only.

    Returns:
        `(dataset, steps)`: batches `({"tokens": [rows, T], "reset": [rows]}, next tokens [rows, T])` and the
        batches per pass. With a seed, the dataset repeats for every epoch (through `training.epochs`).
    """
    slack = seq_len if seed is not None else 0  # room for the epoch's random offset
    length = (len(ids) - 1 - slack) // rows  # tokens per stream
    window = min(seq_len, length)
    steps = length // window
    tokens = tf.constant(ids)
    starts = tf.range(rows, dtype=tf.int64) * length
    positions = tf.range(window + 1, dtype=tf.int64)

    def cut(offset, j):
        w = tf.gather(tokens, offset + starts[:, None] + j * window + positions[None, :])
        return {"tokens": w[:, :-1], "reset": tf.fill([rows], tf.equal(j, 0))}, w[:, 1:]

    def epoch(offset):
        return tf.data.Dataset.range(steps).map(lambda j: cut(offset, j), num_parallel_calls=AUTOTUNE)

    if seed is None:
        return epoch(tf.constant(0, tf.int64)).cache().prefetch(AUTOTUNE), steps
    offsets = epoch_seeds(seed).map(
        lambda epoch_seed: tf.random.stateless_uniform([], tf.stack([epoch_seed, 0]), maxval=slack, dtype=tf.int64))
    return offsets.flat_map(epoch).prefetch(AUTOTUNE), steps


def eval_windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation windows: consecutive, non-overlapping; a text shorter than one window is one shorter window."""
    length = min(seq_len, len(ids) - 1)
    n = (len(ids) - 1) // length
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return x, y


@dataclasses.dataclass
class Data(TaskData):
    """The task's datasets, batched, and what the run and the export need to know about them.

    Attributes:
        vocabulary: the training tokens, most frequent first: index i + 1 is
            `vocabulary[i]`; 0 is the unknown token.
        level: `char` or `word` (`data.level`).
        val_windows: `(x, y)` int32 numpy arrays `[N, T]` of the validation windows, for the report; None
            without validation text.
    """

    vocabulary: list[str]
    level: str
    val_windows: tuple | None


def load_data(cfg, run_dir) -> Data:
    """Reads the text described by `cfg.data`, splits it, builds the vocabulary from the training part and the datasets.

    Args:
        cfg: a dialogue run config.
        run_dir: the run folder (unused: the text is read whole, nothing is cached).

    Returns:
        `Data`; its `fingerprint` hashes the text, the split and the tokens.

    Raises:
        UserError: an empty or unreadable text, or one too short for a batch.
    """
    d = cfg.data
    text, origin = read_text(d)
    if d.max_chars is not None:
        text = text[: d.max_chars]
    if not text.strip():
        raise UserError(f"data ({origin}): the text is empty")
    train_text, val_text = split_text(text, d.validation_split)
    train_tokens = tokenize([train_text], d.level, d.lowercase).flat_values.numpy()
    vocabulary, train_ids = build_vocabulary(train_tokens, d.max_vocab, d.min_count)
    val_ids = encode(tokenize([val_text], d.level, d.lowercase).flat_values.numpy(), vocabulary) if val_text else np.zeros(0, np.int32)

    windows = len(train_ids) // d.seq_len - 1
    if windows < d.batch_size:
        raise UserError(f"data ({origin}): the training text has {len(train_ids)} {d.level} tokens, fewer than one batch "
                        f"(data.batch_size {d.batch_size} windows of data.seq_len {d.seq_len} tokens, plus one window); "
                        "lower them or give more text")
    validation = None
    val_windows = None
    if len(val_ids) >= 2:
        val_windows = eval_windows(val_ids, d.seq_len)
        validation = tf.data.Dataset.from_tensor_slices(val_windows).batch(d.batch_size).cache().prefetch(AUTOTUNE)
    if d.stateful:
        train, train_steps = stream_dataset(train_ids, d.seq_len, d.batch_size, cfg.seed)
        validation = None
        if len(val_ids) > d.batch_size:  # one token per stream at least, and the one after it
            validation, _ = stream_dataset(val_ids, d.seq_len, d.batch_size, None)
        elif len(val_ids) >= 2:
            raise UserError(f"data ({origin}): data.stateful reads the validation text as data.batch_size "
                            f"({d.batch_size}) streams, but it has only {len(val_ids)} {d.level} tokens; "
                            "raise data.validation_split or lower data.batch_size")
    else:
        train, train_steps = train_dataset(train_ids, d.seq_len, d.batch_size, cfg.seed), windows // d.batch_size
    counts = {"chars": len(text), "train_chars": len(train_text), "validation_chars": len(val_text),
              "train_tokens": len(train_ids), "validation_tokens": len(val_ids), "vocab_size": len(vocabulary) + 1,
              "train_unknown_tokens": int((train_ids == 0).sum()), "validation_unknown_tokens": int((val_ids == 0).sum())}
    digest = hashlib.sha256()
    digest.update(f"{d.level}:{d.lowercase}:{len(train_text)}:".encode())
    digest.update(text.encode("utf-8", errors="replace"))
    digest.update("\x00".join(vocabulary).encode())
    print(f"Dialogue data ({origin}): {len(text):,} characters; {len(train_ids):,} training and {len(val_ids):,} validation "
          f"{d.level} tokens; vocabulary {len(vocabulary) + 1} (unknown token included)", flush=True)
    return Data(
        train=train,
        validation=validation,
        test=None,
        train_steps=train_steps,
        vocabulary=vocabulary,
        level=d.level,
        val_windows=val_windows,
        fingerprint=digest.hexdigest()[:16],
        counts=counts,
    )
