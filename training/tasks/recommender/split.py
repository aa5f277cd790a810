"""The NCF paper's leave-one-out split: implicit feedback, each user's latest item for test, the one before for validation.

Each held-out item is ranked against `negatives` items the user never
interacted with, fixed by a seed; `complement_items` draws exactly from that
complement (the training pipeline uses the same idea inside `tf.data`).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from training.errors import UserError
from training.tasks.recommender.readers import Log


@dataclasses.dataclass
class Split:
    """Implicit feedback, indexed and split as in the NCF paper. Indices refer to `user_ids` and `item_ids`."""

    user_ids: np.ndarray  # [U] str, in index order (sorted)
    item_ids: np.ndarray  # [I] str
    train_users: np.ndarray  # [N] int32: training positives
    train_items: np.ndarray  # [N] int32
    train_weights: np.ndarray  # [N] float32, mean 1
    val_users: np.ndarray  # [V] int32
    val_candidates: np.ndarray  # [V, 1 + negatives] int32: held-out item first, then never-seen items
    test_users: np.ndarray
    test_candidates: np.ndarray
    seen_splits: np.ndarray  # [U + 1] int64: row splits of every item each user interacted with
    seen_items: np.ndarray  # [S] int32, sorted within each user
    duplicates: int  # repeated (user, item) rows merged into one interaction

    @property
    def num_users(self):
        return len(self.user_ids)

    @property
    def num_items(self):
        return len(self.item_ids)

    def fingerprint(self) -> str:
        """Identifies the data and the split: IDs, training positives and evaluation candidates."""
        digest = hashlib.sha256()
        for ids in (self.user_ids, self.item_ids):
            digest.update("\x00".join(ids).encode())
        for a in (self.train_users, self.train_items, self.val_users, self.val_candidates, self.test_users, self.test_candidates):
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()[:16]


def complement_items(sorted_positives: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The `ranks`-th items (0-based) among those NOT in `sorted_positives`: exact sampling from the complement.

    With q_k = p_k - k (how many non-positives lie below the k-th positive), the
    r-th non-positive item is r + #{k : q_k <= r}.
    """
    q = sorted_positives - np.arange(len(sorted_positives))
    return ranks + np.searchsorted(q, ranks, side="right")


def make_split(log: Log, min_rating=None, min_user_interactions=3, negatives=99, seed=0, recency_weight=0.0,
               train_on_validation=False) -> Split:
    """Implicit feedback and the leave-one-out split of the NCF paper.

    Each user with at least `min_user_interactions` interactions holds out the
    latest one for test and the one before it for validation (ties and logs
    without timestamps are ordered at random, seeded). Each held-out item is
    ranked against `negatives` items the user never interacted with, drawn
    without replacement from a generator seeded with `seed`. With
    `recency_weight` w > 0, each training interaction's weight is multiplied by
    exp(w * (r - 1)), r its place in the user's history (0 first, 1 latest).
    With `train_on_validation`, the validation items are training interactions
    instead (the final fit, once settings and epochs were chosen on them): the
    test items, their negatives and the training order are unchanged.
    """
    if recency_weight and log.timestamp is None:
        raise UserError("data.recency_weight: the data has no timestamps to tell recent interactions "
                        "(map one with data.columns.timestamp, or set data.recency_weight: 0)")
    keep = np.ones(len(log.users), bool)
    if min_rating is not None:
        if log.rating is None:
            raise UserError("data.min_rating: the data has no ratings (map one with data.columns.rating, or unset data.min_rating)")
        keep = log.rating >= min_rating
        if not keep.any():
            raise UserError(f"data.min_rating {min_rating}: no rating is that high (highest: {log.rating.max()})")
    user_ids, users = np.unique(log.users[keep].astype(str), return_inverse=True)
    item_ids, items = np.unique(log.items[keep].astype(str), return_inverse=True)
    n_users, n_items = len(user_ids), len(item_ids)
    if n_items <= negatives:
        raise UserError(f"data.eval_negatives {negatives}: the catalogue has only {n_items} items; "
                        "each held-out item needs that many others to rank against")
    ts = log.timestamp[keep] if log.timestamp is not None else np.zeros(len(users))
    weight = log.weight[keep] if log.weight is not None else np.ones(len(users))
    if (weight < 0).any():
        raise UserError("data.columns.weight: weights must be >= 0, found a negative one")

    # One interaction per (user, item): the latest time, the summed weight (e.g. watch time over repeat views).
    key = users.astype(np.int64) * n_items + items
    order = np.lexsort((ts, key))
    key, ts, weight = key[order], ts[order], weight[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)] - 1
    pair_key, pair_ts, pair_w = key[starts], ts[ends], np.add.reduceat(weight, starts)
    pair_user, pair_item = (pair_key // n_items).astype(np.int32), (pair_key % n_items).astype(np.int32)

    rng = np.random.default_rng(seed)
    chrono = np.lexsort((rng.random(len(pair_key)), pair_ts, pair_user))  # by user, then time; ties at random
    counts = np.bincount(pair_user, minlength=n_users)
    last = np.cumsum(counts) - 1
    evaluated = np.flatnonzero(counts >= min_user_interactions)
    test_rows, val_rows = chrono[last[evaluated]], chrono[last[evaluated] - 1]
    train_mask = np.ones(len(pair_key), bool)
    train_mask[test_rows] = False
    if train_on_validation:
        val_rows = val_rows[:0]
    train_mask[val_rows] = False
    if recency_weight:  # the held-out items are each user's latest: recent taste says more about them
        position = np.empty(len(chrono))
        position[chrono] = np.arange(len(chrono)) - np.r_[0, np.cumsum(counts)[:-1]][pair_user[chrono]]
        pair_w = pair_w * np.exp(recency_weight * (position / np.maximum(counts[pair_user] - 1, 1) - 1))

    # Everything a user interacted with (pairs are sorted by user, then item).
    seen_splits = np.r_[0, np.cumsum(counts)].astype(np.int64)

    def sample_negatives(users_):
        out = np.empty((len(users_), negatives), np.int32)
        for row, u in enumerate(users_):
            seen = pair_item[seen_splits[u]:seen_splits[u + 1]]
            free = n_items - len(seen)
            if free < negatives:
                raise UserError(f"data.eval_negatives {negatives}: user `{user_ids[u]}` has interacted with all but {free} "
                                "of the items; lower data.eval_negatives")
            out[row] = complement_items(seen, rng.choice(free, negatives, replace=False))
        return out

    val_users = pair_user[val_rows]
    test_users = pair_user[test_rows]
    # Test first: its candidates do not depend on whether users also have a validation item.
    test_candidates = np.concatenate([pair_item[test_rows, None], sample_negatives(test_users)], 1)
    val_candidates = np.concatenate([pair_item[val_rows, None], sample_negatives(val_users)], 1)
    train_w = pair_w[train_mask].astype(np.float64)
    train_w = train_w / max(train_w.mean(), 1e-12)
    return Split(
        user_ids=user_ids, item_ids=item_ids,
        train_users=pair_user[train_mask], train_items=pair_item[train_mask], train_weights=train_w.astype(np.float32),
        val_users=val_users, val_candidates=val_candidates, test_users=test_users, test_candidates=test_candidates,
        seen_splits=seen_splits, seen_items=pair_item, duplicates=int(len(key) - len(pair_key)),
    )
