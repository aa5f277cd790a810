"""The recommender's data: the log named by `cfg.data`, its split, and the `tf.data` batches of training and evaluation.

Batches, in training and evaluation alike, are `({"user": [B], "item": [B, C]},
relevance [B, C])`: C candidates per user, relevance 0 for negatives and the
interaction's weight (1 unless weighted) for the positive. Training negatives
(`train_negatives` per positive) are drawn again every epoch inside `tf.data`,
exactly from the items the user has not interacted with in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from training.epochs import epoch_seeds
from training.tasks.base import TaskData
from training.tasks.recommender.readers import Log, read_interactions, read_tfds, read_titles
from training.tasks.recommender.sample import ensure_sample_views
from training.tasks.recommender.split import Split, make_split

AUTOTUNE = tf.data.AUTOTUNE


def train_dataset(split: Split, negatives: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Training batches: every positive once per epoch, in a new order, each with `negatives` fresh negatives.

    Negatives are drawn inside the pipeline, exactly from the items the user has
    no training interaction with (`complement_items` in TensorFlow): a new draw
    every epoch, seeded, and never one of the user's training positives.
    """
    n, n_items = len(split.train_users), split.num_items
    users = tf.constant(split.train_users)
    items = tf.constant(split.train_items)
    weights = tf.constant(split.train_weights)
    # Training positives sorted by (user, item); key = user * I + (item - rank within user).
    order = np.lexsort((split.train_items, split.train_users))
    su, si = split.train_users[order].astype(np.int64), split.train_items[order].astype(np.int64)
    count = np.bincount(su, minlength=split.num_users).astype(np.int64)
    start = np.r_[0, np.cumsum(count)[:-1]].astype(np.int64)
    keys = tf.constant(su * n_items + si - (np.arange(n) - start[su]))
    count, start = tf.constant(count), tf.constant(start)

    def sample(u, seed_pair):
        b = tf.shape(u)[0]
        u64 = tf.cast(u, tf.int64)
        free = n_items - tf.gather(count, u64)
        draw = tf.random.stateless_uniform([b, negatives], seed_pair, dtype=tf.float64)
        r = tf.minimum(tf.cast(draw * tf.cast(free[:, None], tf.float64), tf.int64), tf.maximum(free[:, None] - 1, 0))
        query = tf.reshape(u64[:, None] * n_items + r, [-1])
        below = tf.reshape(tf.searchsorted(keys, query, side="right", out_type=tf.int64), [b, negatives]) - tf.gather(start, u64)[:, None]
        return tf.cast(tf.minimum(r + below, n_items - 1), tf.int32)

    def batch(epoch_seed, j, perm):
        idx = perm[j * batch_size:(j + 1) * batch_size]
        u, i, w = tf.gather(users, idx), tf.gather(items, idx), tf.gather(weights, idx)
        neg = sample(u, tf.stack([epoch_seed, j + 1]))
        x = {"user": u, "item": tf.concat([i[:, None], neg], 1)}
        y = tf.concat([w[:, None], tf.zeros(tf.shape(neg), tf.float32)], 1)
        return x, y

    n_batches = -(-n // batch_size)

    def epoch(epoch_seed):
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([epoch_seed, 0]))
        return tf.data.Dataset.range(n_batches).map(lambda j: batch(epoch_seed, j, perm), num_parallel_calls=AUTOTUNE)

    # One seed per epoch: a new order and new negatives each epoch, the same ones for an epoch redone after a restart.
    return epoch_seeds(seed).flat_map(epoch).prefetch(AUTOTUNE)


def eval_dataset(users: np.ndarray, candidates: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Each evaluation user with its held-out item first and its negatives: `[B]`, `[B, 1 + negatives]`."""
    relevance = np.zeros(candidates.shape, np.float32)
    relevance[:, 0] = 1.0
    ds = tf.data.Dataset.from_tensor_slices(({"user": users.astype(np.int32), "item": candidates.astype(np.int32)}, relevance))
    return ds.batch(batch_size).cache().prefetch(AUTOTUNE)


@dataclasses.dataclass
class Data(TaskData):
    """The task's datasets, batched (see `TaskData`), and what the model, the report and the export need of the split.

    Attributes:
        split: the indexed interactions and held-out candidates.
        titles: `[I]` str, each item's title, "" where unknown.
    """

    split: Split
    titles: np.ndarray


def read_log(cfg) -> Log:
    """The interactions `cfg.data` names: a file, a tfds dataset, or the generated sample log (with its titles).

    Args:
        cfg: the run config.

    Returns:
        A `Log`.
    """
    d = cfg.data
    if d.source == "tfds":
        return read_tfds(d)
    if d.source == "sample":
        root = ensure_sample_views(d.sample_dir, users=d.sample_users, items=d.sample_items)
        columns = type(d.columns)(user="user_id", item="item_id", timestamp="timestamp", weight=d.columns.weight)
        log = read_interactions(root / "views.csv", "csv", columns)
        log.titles = read_titles(root / "titles.csv", columns)
        return log
    return read_interactions(d.path, d.format, d.columns, d.delimiter)


def load_data(cfg, run_dir) -> Data:
    """Reads the interactions described by `cfg.data`, splits them and builds the datasets.

    Args:
        cfg: the run config.
        run_dir: the run folder (unused: nothing here is cached).

    Returns:
        `Data`: training batches with fresh negatives each epoch, validation and
        test batches of each held-out item with its negatives (None when no user
        has one), the split and the item titles.
    """
    d = cfg.data
    log = read_log(cfg)
    split = make_split(log, d.min_rating, d.min_user_interactions, d.eval_negatives,
                       cfg.seed if d.split_seed is None else d.split_seed, d.recency_weight, d.train_on_validation)
    titles = log.titles or {}
    if d.items_path:
        titles = read_titles(d.items_path, d.columns)
    title_array = np.array([titles.get(i, "") for i in split.item_ids], dtype=object)
    counts = {"users": split.num_users, "items": split.num_items, "train_interactions": len(split.train_users),
              "validation_users": len(split.val_users), "test_users": len(split.test_users),
              "duplicate_rows": split.duplicates}
    print(f"Recommender data: {split.num_users} users, {split.num_items} items, {len(split.train_users)} training "
          f"interactions, {len(split.test_users)} users held out for validation and test", flush=True)
    return Data(
        train=train_dataset(split, d.train_negatives, d.batch_size, cfg.seed),
        validation=eval_dataset(split.val_users, split.val_candidates, d.eval_batch_size) if len(split.val_users) else None,
        test=eval_dataset(split.test_users, split.test_candidates, d.eval_batch_size) if len(split.test_users) else None,
        train_steps=-(-len(split.train_users) // d.batch_size),
        split=split,
        titles=title_array,
        fingerprint=split.fingerprint(),
        counts=counts,
    )
