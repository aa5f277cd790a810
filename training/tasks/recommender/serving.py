"""The export: the `Recommender` layer on raw string IDs, its signatures `recommend`, `score`, `similar_items`, and its checks.

Unknown users get the most popular items (`popularity`); unknown items score 0
and have no similar items. Every input is one value per row `[B]` (TF
Serving's row format needs it), `k` included. The export needs nothing of reelml to load.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.ncf import item_embeddings
from training.tasks.recommender.split import Split
from training.tasks.signatures import per_row


class Recommender(keras.layers.Layer):
    """The served recommender: raw string IDs in and out, the trained model, lookups and catalogue inside.

    Every table is a Keras lookup layer (vocabularies saved as assets) or a
    non-trainable variable, so a SavedModel holds it all and loads anywhere
    with `tf.saved_model.load`.
    """

    def __init__(self, model, split: Split, titles, popularity):
        super().__init__(name="recommender")
        self.model = model
        self.num_items = split.num_items
        # Index 0 is "unknown"; known IDs are their model index + 1.
        self.user_lookup = keras.layers.StringLookup(vocabulary=list(split.user_ids), num_oov_indices=1, name="user_lookup")
        self.item_lookup = keras.layers.StringLookup(vocabulary=list(split.item_ids), num_oov_indices=1, name="item_lookup")
        self.item_names = keras.layers.StringLookup(vocabulary=list(split.item_ids), num_oov_indices=1, invert=True,
                                                    name="item_names")
        self.user_lookup(tf.constant([""]))  # build the lookup layers (ExportArchive refuses unbuilt ones)
        self.item_lookup(tf.constant([""]))
        self.item_names(tf.constant([0], tf.int64))
        self.titles = tf.Variable(tf.constant([t.encode("utf-8") for t in titles], tf.string), trainable=False, name="titles")
        self.seen_items = tf.Variable(split.seen_items.astype(np.int64), trainable=False, name="seen_items")
        self.seen_splits = tf.Variable(split.seen_splits, trainable=False, name="seen_splits")
        self.popularity = tf.Variable(popularity.astype(np.float32), trainable=False, name="popularity")
        self.built = True

    def _users(self, user_id):
        index = self.user_lookup(user_id)
        return tf.cast(tf.maximum(index - 1, 0), tf.int32), index > 0

    def _items(self, item_id):
        index = self.item_lookup(item_id)
        return tf.cast(tf.maximum(index - 1, 0), tf.int32), index > 0

    def _named(self, indices, valid):
        ids = self.item_names(tf.cast(indices, tf.int64) + 1)
        titles = tf.gather(self.titles, indices)
        return tf.where(valid, ids, ""), tf.where(valid, titles, "")

    def recommend(self, user_id, k):
        """Top-k unseen items per user; unknown users get the most popular items.

        `k` is per row (`[B]`, or one value for every row; below 0: none). The outputs are `[B, largest k]` (at
        most the catalogue); a row's columns beyond its own k, or beyond the items it has not seen, hold the item
        ID "", the title "" and the score 0.
        """
        users, known = self._users(user_id)
        n = tf.shape(users)[0]
        k = tf.convert_to_tensor(k, tf.int32)
        width = tf.clip_by_value(tf.reduce_max(k), 0, self.num_items)  # one value for no rows still sets it
        k = per_row(k, n, "k")
        catalogue = tf.tile(tf.range(self.num_items, dtype=tf.int32)[None], [n, 1])
        scores = tf.cast(self.model({"user": users, "item": catalogue}, training=False), tf.float32)
        scores = tf.where(known[:, None], scores, self.popularity[None, :])
        seen = tf.gather(tf.RaggedTensor.from_row_splits(self.seen_items, self.seen_splits, validate=False), users)
        rows = seen.value_rowids()
        hits = tf.boolean_mask(tf.stack([rows, seen.values], axis=1), tf.gather(known, rows))  # unknown users saw nothing
        mask = tf.scatter_nd(hits, tf.ones([tf.shape(hits)[0]], tf.bool), [tf.cast(n, tf.int64), self.num_items])
        scores = tf.where(mask, -np.inf, scores)
        top = tf.math.top_k(scores, width)
        valid = (top.values > -np.inf) & (tf.range(width)[None, :] < k[:, None])
        ids, titles = self._named(top.indices, valid)
        return {"item_id": ids, "title": titles, "score": tf.where(valid, top.values, 0.0), "known_user": known}

    def score(self, user_id, item_id):
        """Probability of an interaction per (user, item) pair; unknown users: the item's popularity; unknown items: 0."""
        users, known_user = self._users(user_id)
        items, known_item = self._items(item_id)
        scores = tf.cast(self.model({"user": users, "item": items[:, None]}, training=False), tf.float32)[:, 0]
        scores = tf.where(known_user, scores, tf.gather(self.popularity, items))
        return {"score": tf.where(known_item, scores, 0.0), "known_user": known_user, "known_item": known_item}

    def similar_items(self, item_id, k):
        """The k items whose learned embeddings are closest in cosine similarity (the item itself excluded).

        `k` is per row as in `recommend`; padding columns hold "" and the similarity 0.
        """
        items, known = self._items(item_id)
        k = tf.convert_to_tensor(k, tf.int32)
        width = tf.clip_by_value(tf.reduce_max(k), 0, self.num_items - 1)
        k = per_row(k, tf.shape(items)[0], "k")
        vectors = tf.cast(item_embeddings(self.model), tf.float32)
        vectors = vectors / (tf.norm(vectors, axis=-1, keepdims=True) + 1e-12)
        sims = tf.matmul(tf.gather(vectors, items), vectors, transpose_b=True)
        sims = tf.where(tf.one_hot(items, self.num_items, on_value=True, off_value=False), -np.inf, sims)
        top = tf.math.top_k(sims, width)
        valid = (top.values > -np.inf) & known[:, None] & (tf.range(width)[None, :] < k[:, None])
        ids, titles = self._named(top.indices, valid)
        return {"item_id": ids, "title": titles, "similarity": tf.where(valid, top.values, 0.0), "known_item": known}


def popularity(split: Split, train_only=False) -> np.ndarray:
    """Share of users who interacted with each item (training interactions only, for TopPop)."""
    items = split.train_items if train_only else split.seen_items
    return np.bincount(items, minlength=split.num_items) / max(split.num_users, 1)


def serving_endpoints(cfg, model, data):
    """What the export tracks (the `Recommender` layer, holding the model) and its signatures on raw IDs.

    `recommend` comes first, so it is also `serving_default`.

    Args:
        cfg: the run config.
        model: the trained NCF model.
        data: the task's `Data` (split, titles).

    Returns:
        `(tracked, {signature name: (function, [tf.TensorSpec])})`.
    """
    served = Recommender(model, data.split, data.titles, popularity(data.split))
    ids = tf.TensorSpec([None], tf.string, name="user_id")
    k = tf.TensorSpec([None], tf.int32, name="k")  # per row: TF Serving's row format needs it
    items = tf.TensorSpec([None], tf.string, name="item_id")
    return served, {
        "recommend": (served.recommend, [ids, k]),
        "score": (served.score, [ids, items]),
        "similar_items": (served.similar_items, [items, k]),
    }


def verification_inputs(cfg, data):
    """A few real users and items, and an unknown one of each, as each signature takes them."""
    s = data.split
    users = [s.user_ids[i].encode() for i in range(min(3, s.num_users))] + [b"\x00no such user"]
    items = [s.item_ids[i].encode() for i in range(min(3, s.num_items))] + [b"\x00no such item"]
    return {
        "recommend": {"user_id": users, "k": np.array([10, 3, 10, 5][:len(users)], np.int32)},  # k per row
        "score": {"user_id": users, "item_id": items},
        "similar_items": {"item_id": items, "k": np.array([5, 2, 5, 5][:len(items)], np.int32)},
    }


def export_metadata(cfg, data) -> dict:
    """What `assets.extra/reelml.json` records: the model (for pretraining NeuMF from it) and catalogue sizes."""
    return {"model": cfg.model.model_dump(), "num_users": data.split.num_users, "num_items": data.split.num_items,
            "has_titles": bool(any(data.titles))}
