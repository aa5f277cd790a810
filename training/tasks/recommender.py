"""Recommender: neural collaborative filtering on implicit feedback. Everything the task needs around its model.

- data: MovieLens files as they come, any CSV or Parquet with a column mapping,
  tfds `movielens/*` names, or a generated sample log -> implicit feedback ->
  the NCF paper's leave-one-out split (each user's latest interaction is the
  test item, the one before it the validation item, each ranked against 99
  items the user never interacted with, fixed by a seed);
- training batches: each positive with `train_negatives` items drawn again every
  epoch inside `tf.data`, exactly from the items the user has not interacted
  with in training;
- loss (binary cross-entropy, optionally weighted per interaction) and the
  ranking metrics HR@K and NDCG@K, as Keras metrics over `[users, candidates]`;
- serving signatures on raw string IDs: `recommend`, `score`, `similar_items`;
- the report: the TopPop baseline on the same split, HR@K curves;
- prediction for `reelml predict EXPORT --user U`, `--users-file F`, `--similar-to ITEM`.

Batches, in training and evaluation alike, are `({"user": [B], "item": [B, C]},
relevance [B, C])`: C candidates per user, relevance 0 for negatives and the
interaction's weight (1 unless weighted) for the positive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models import MODELS
from models.ncf import item_embeddings, neumf_weights_from_pretrained
from training.epochs import epoch_seeds
from training.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
_MOVIELENS_COLUMNS = ("user", "item", "rating", "timestamp")


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Log:
    """Interactions as read from the source: one entry per row, IDs as strings."""

    users: np.ndarray  # str
    items: np.ndarray  # str
    rating: np.ndarray | None = None  # float64
    timestamp: np.ndarray | None = None  # float64
    weight: np.ndarray | None = None  # float64
    titles: dict | None = None  # item ID -> title


def detect_format(path: Path) -> str:
    """`auto`: the MovieLens layouts by their file names, Parquet by extension, else a CSV with `data.columns`."""
    name = path.name.lower()
    if name == "u.data" or name.endswith(".data"):
        return "movielens_100k"
    if name.endswith(".dat"):
        return "movielens_1m"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
        if "userId" in header and "movieId" in header:
            return "movielens_latest"
    return "csv"


def _parser_error(path, e):
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
    if match:
        want, line, saw = match.groups()
        return UserError(f"{path}: line {line}: malformed row, expected {want} fields, found {saw}")
    return UserError(f"{path}: cannot be parsed ({str(e).splitlines()[0][:200]})")


def _read_table(path: Path, sep: str, header: bool, names=None, encoding="utf-8"):
    """A text table as strings; returns (DataFrame, line number of the first data row)."""
    import pandas as pd

    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (expected one interaction per line)")
    try:
        df = pd.read_csv(
            path, sep=sep, header=0 if header else None, names=names, index_col=False, dtype=str, keep_default_na=False,
            skip_blank_lines=False, engine="c" if len(sep) == 1 else "python", encoding=encoding, quoting=3 if not header else 0,
        )
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty (expected one interaction per line)") from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, e) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not {encoding} text ({e.reason} at byte {e.start})") from None
    missing = df.isna().to_numpy()  # the python parser (a separator of several characters) leaves missing fields NaN
    df = df.fillna("")
    blank = (df == "").all(axis=1)
    first = 2 if header else 1
    if header:
        _check_short_rows(path, df, blank, missing, sep, encoding, first)
    return df[~blank], first


def _check_short_rows(path, df, blank, missing, sep, encoding, first):
    """A row with fewer fields than the header is malformed, whichever column it lacks.

    pandas fills the missing fields in silently; the C parser with "", which an empty last field also gives:
    only if some row's last field is empty are the rows counted again, with the csv module.
    """
    import csv

    n = df.shape[1]
    header = ", ".join(map(str, df.columns))
    short = missing.any(axis=1) & ~missing.all(axis=1)
    if short.any():
        row = int(np.argmax(short))
        raise UserError(f"{path}: line {int(df.index[row]) + first}: malformed row, expected {n} fields ({header}), "
                        f"found {int((~missing[row]).sum())}")
    if len(sep) > 1 or not ((df.iloc[:, -1] == "") & ~blank).any():
        return
    with open(path, newline="", encoding=encoding, errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        next(reader, None)
        for row in reader:
            if row and any(field.strip() for field in row) and len(row) < n:
                raise UserError(f"{path}: line {reader.line_num}: malformed row, expected {n} fields ({header}), "
                                f"found {len(row)}")


def _column(df, path, name, first_line, numeric, where="line"):
    """One column as str or float64; the first empty or non-numeric value is reported by line."""
    import pandas as pd

    raw = df[name]
    if numeric:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
    else:
        values = raw.astype(str).str.strip().to_numpy()
        bad = values == ""
    if bad.any():
        row = int(np.argmax(bad))
        line = int(df.index[row]) + first_line
        got = raw.iloc[row]
        expected = "a number" if numeric else "an ID"
        raise UserError(f"{path}: {where} {line}: malformed row, column `{name}` is {got!r}, expected {expected}")
    return values


def read_interactions(path, fmt="auto", columns=None, delimiter=",") -> Log:
    """Reads an interactions file into a `Log`; malformed rows raise `UserError` naming file and line.

    Args:
        path: MovieLens `u.data` (tab-separated), `ratings.dat` (`::`), `ratings.csv`
            (with header), or any CSV or Parquet file.
        fmt: one of `data.format`'s values.
        columns: the `data.columns` section (for `csv` and `parquet`).
        delimiter: field separator of a `csv` file.
    """
    from training.config import Columns

    path, columns = Path(path), columns or Columns()
    if not path.exists():
        raise UserError(f"data.path `{path}`: file not found")
    if path.is_dir():
        raise UserError(f"data.path `{path}`: expected a file of interactions, found a folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("movielens_100k", "movielens_1m"):
        sep = "\t" if fmt == "movielens_100k" else "::"
        df, first = _read_table(path, sep, header=False, encoding="latin-1")
        if df.shape[1] > 4:  # the first line had more fields: the parser took its width
            extra = (df.iloc[:, 4:] != "").any(axis=1).to_numpy()
            raise UserError(f"{path}: line {int(df.index[int(np.argmax(extra))]) + first}: malformed row, expected 4 fields "
                            f"(user, item, rating, timestamp) separated by {sep!r}, found more")
        df = df.reindex(columns=range(4), fill_value="")
        df.columns = list(_MOVIELENS_COLUMNS)
        short = (df == "").any(axis=1).to_numpy()
        if short.any():
            line = int(df.index[int(np.argmax(short))]) + first
            raise UserError(f"{path}: line {line}: malformed row, expected 4 fields (user, item, rating, timestamp) "
                            f"separated by {sep!r}")
        mapping = dict(zip(("user", "item", "rating", "timestamp"), _MOVIELENS_COLUMNS))
        where = "line"
    elif fmt in ("csv", "movielens_latest"):
        sep = "\t" if delimiter in ("\\t", "tab") else delimiter
        df, first = _read_table(path, sep, header=True)
        if fmt == "movielens_latest":
            mapping = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        else:
            mapping = {k: getattr(columns, k) for k in ("user", "item", "rating", "timestamp", "weight") if getattr(columns, k)}
        where = "line"
    elif fmt == "parquet":
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})") from None
        df = df.reset_index(drop=True)
        first = 1
        mapping = {k: getattr(columns, k) for k in ("user", "item", "rating", "timestamp", "weight") if getattr(columns, k)}
        where = "row"
    else:
        raise AssertionError(fmt)

    missing = [f"`{c}` (data.columns.{k})" for k, c in mapping.items() if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)}; the file has columns {list(map(str, df.columns))}")
    if len(df) == 0:
        raise UserError(f"{path}: no interactions in the file (only a header or blank lines)")
    if fmt == "parquet":
        df = df[list(mapping.values())]
        df = df.astype({mapping[k]: str for k in ("user", "item")}).replace({"None": "", "nan": ""})
    def get(key, numeric):
        return _column(df, path, mapping[key], first, numeric, where) if key in mapping else None

    return Log(users=get("user", False), items=get("item", False), rating=get("rating", True),
               timestamp=get("timestamp", True), weight=get("weight", True))


def read_titles(path, columns) -> dict:
    """Item ID -> title, from MovieLens `u.item` (latin-1, `|`), `movies.dat` (latin-1, `::`), or a CSV/Parquet."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.items_path `{path}`: file not found")
    name = path.name.lower()
    if name == "u.item" or name.endswith(".item") or name.endswith(".dat"):
        sep = "|" if not name.endswith(".dat") else "::"
        titles = {}
        with open(path, encoding="latin-1") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split(sep)
                if len(fields) < 2:
                    raise UserError(f"{path}: line {line_no}: malformed row, expected an ID and a title separated by {sep!r}")
                titles[fields[0].strip()] = fields[1].strip()
        return titles
    df = pd.read_parquet(path) if name.endswith((".parquet", ".pq")) else pd.read_csv(path, dtype=str, keep_default_na=False)
    id_col = columns.item if columns.item in df.columns else ("movieId" if "movieId" in df.columns else df.columns[0])
    title_col = columns.title if columns.title in df.columns else df.columns[1]
    return dict(zip(df[id_col].astype(str).str.strip(), df[title_col].astype(str)))


def _read_tfds(d) -> Log:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir)
        if d.tfds_download:
            builder.download_and_prepare()
        features = builder.info.features
        if "user_id" not in features or "movie_id" not in features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: expected MovieLens ratings (user_id, movie_id), found {list(features)}")
        ds = builder.as_dataset(split="train", shuffle_files=False)
    except UserError:
        raise
    except Exception as e:  # tfds raises many types (registry, download, missing files)
        raise UserError(
            f"data.tfds_name `{d.tfds_name}`: could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "Without internet, point data.tfds_data_dir at a prepared tfds directory and set data.tfds_download: false"
        ) from None
    keys = [k for k in ("user_id", "movie_id", "user_rating", "timestamp", "movie_title") if k in features]
    parts = {k: [] for k in keys}
    for batch in ds.map(lambda e: {k: e[k] for k in keys}).batch(65536).as_numpy_iterator():
        for k in keys:
            parts[k].append(batch[k])
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    if not cols or len(cols["user_id"]) == 0:
        raise UserError(f"data.tfds_name `{d.tfds_name}`: no ratings in its train split")
    def text(values):
        return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in values], dtype=object)

    items = text(cols["movie_id"])
    titles = dict(zip(items, text(cols["movie_title"]))) if "movie_title" in cols else None
    return Log(users=text(cols["user_id"]), items=items,
               rating=cols["user_rating"].astype(np.float64) if "user_rating" in cols else None,
               timestamp=cols["timestamp"].astype(np.float64) if "timestamp" in cols else None, titles=titles)


# --------------------------------------------------------------------------- the split


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


# --------------------------------------------------------------------------- tf.data


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


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    """The task's datasets, batched, and what the run and the export need to know about them."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    train_steps: int  # batches per epoch
    split: Split
    titles: np.ndarray  # [I] str, "" where unknown
    fingerprint: str  # hash of the IDs, training positives and evaluation candidates
    counts: dict


def _read_log(cfg) -> Log:
    d = cfg.data
    if d.source == "tfds":
        return _read_tfds(d)
    if d.source == "sample":
        from training.tasks.recommender_sample import ensure_sample_views

        root = ensure_sample_views(d.sample_dir, users=d.sample_users, items=d.sample_items)
        columns = type(d.columns)(user="user_id", item="item_id", timestamp="timestamp", weight=d.columns.weight)
        log = read_interactions(root / "views.csv", "csv", columns)
        log.titles = read_titles(root / "titles.csv", columns)
        return log
    return read_interactions(d.path, d.format, d.columns, d.delimiter)


def load_data(cfg, run_dir) -> Data:
    """Reads the interactions described by `cfg.data`, splits them and builds the datasets."""
    d = cfg.data
    log = _read_log(cfg)
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


def data_tags(data: Data) -> dict:
    """Run tags describing the data: users, items, interactions, held-out users."""
    return {f"data.{k}": str(v) for k, v in data.counts.items()}


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records: the model (for pretraining NeuMF from it) and catalogue sizes."""
    return {"model": cfg.model.model_dump(), "num_users": data.split.num_users, "num_items": data.split.num_items,
            "has_titles": bool(any(data.titles))}


# --------------------------------------------------------------------------- model, loss, metrics


def build_model(cfg, data: Data) -> keras.Model:
    m = cfg.model
    model = MODELS[m.name](data.split.num_users, data.split.num_items, factors=m.factors, mlp_layers=m.mlp_layers,
                           embedding_l2=m.embedding_l2, l2=cfg.train.l2, seed=cfg.seed)
    if m.pretrain_gmf:
        gmf = _pretrained_weights(cfg, m.pretrain_gmf, "gmf", "model.pretrain_gmf", data)
        mlp = _pretrained_weights(cfg, m.pretrain_mlp, "mlp", "model.pretrain_mlp", data)
        weights = neumf_weights_from_pretrained(gmf, mlp, m.pretrain_alpha)
        for variable in model.weights:
            value = weights.get(variable.path)
            if value is None or tuple(value.shape) != tuple(variable.shape):
                raise UserError(
                    f"model.pretrain_gmf / model.pretrain_mlp: `{variable.path}` has shape {tuple(variable.shape)} here but "
                    f"{None if value is None else tuple(value.shape)} in the pretrained runs; use the same model.factors "
                    "and model.mlp_layers as they did"
                )
            variable.assign(value)
        print(f"NeuMF initialised from GMF {m.pretrain_gmf} and MLP {m.pretrain_mlp}", flush=True)
    return model


def _pretrained_weights(cfg, ref: str, want: str, key: str, data: Data) -> dict:
    """The variables of a trained GMF or MLP, from its export folder or its MLflow run id."""
    from training.export import read_metadata, resolve_export_dir

    if Path(ref).exists():
        export_dir = resolve_export_dir(ref)
    elif re.fullmatch(r"[0-9a-f]{32}", ref):
        import mlflow

        from training.tracking import resolve_uri

        try:
            tags = mlflow.MlflowClient(resolve_uri(cfg.tracking.uri)).get_run(ref).data.tags
        except Exception as e:  # MLflow raises its own exception types
            raise UserError(f"{key} `{ref}`: no such MLflow run ({type(e).__name__})") from None
        if "export.path" not in tags:
            raise UserError(f"{key} `{ref}`: that MLflow run has no export (export.path tag)")
        export_dir = resolve_export_dir(tags["export.path"])
    else:
        raise UserError(f"{key} `{ref}`: neither an export folder nor an MLflow run id (32 hex digits)")
    meta = read_metadata(export_dir)
    model_name = (meta.get("model") or {}).get("name")
    if meta.get("task") != "recommender" or model_name != want:
        raise UserError(f"{key} `{ref}`: expected a {want} recommender export, found task {meta.get('task')!r} model {model_name!r}")
    if meta.get("data_fingerprint") != data.fingerprint:
        raise UserError(
            f"{key} `{ref}`: was trained on other data or another split (fingerprint {meta.get('data_fingerprint')} vs "
            f"{data.fingerprint}); train GMF, MLP and NeuMF on the same data with the same data.split_seed"
        )
    loaded = tf.saved_model.load(str(export_dir))
    return {v.name.rsplit(":", 1)[0]: v.numpy() for v in loaded.variables}


def make_loss(cfg, data: Data):
    """Binary cross-entropy per user row (mean over its candidates), times the positive's weight."""

    def loss(relevance, y_pred):
        relevance = tf.cast(relevance, tf.float32)
        labels = tf.cast(relevance > 0, tf.float32)
        return keras.losses.binary_crossentropy(labels, tf.cast(y_pred, tf.float32)) * tf.reduce_max(relevance, axis=-1)

    return loss


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


def make_metrics(cfg, data: Data):
    return []  # training rows hold 1 + train_negatives candidates: ranking them says little


def make_eval_metrics(cfg, data: Data):
    return [RankingMetric(k, kind) for k in cfg.data.top_k for kind in ("hit", "ndcg")]


# --------------------------------------------------------------------------- serving


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
        """Top-k unseen items per user; unknown users get the most popular items."""
        users, known = self._users(user_id)
        n = tf.shape(users)[0]
        catalogue = tf.tile(tf.range(self.num_items, dtype=tf.int32)[None], [n, 1])
        scores = tf.cast(self.model({"user": users, "item": catalogue}, training=False), tf.float32)
        scores = tf.where(known[:, None], scores, self.popularity[None, :])
        seen = tf.gather(tf.RaggedTensor.from_row_splits(self.seen_items, self.seen_splits, validate=False), users)
        rows = seen.value_rowids()
        hits = tf.boolean_mask(tf.stack([rows, seen.values], axis=1), tf.gather(known, rows))  # unknown users saw nothing
        mask = tf.scatter_nd(hits, tf.ones([tf.shape(hits)[0]], tf.bool), [tf.cast(n, tf.int64), self.num_items])
        scores = tf.where(mask, -np.inf, scores)
        top = tf.math.top_k(scores, tf.clip_by_value(k, 0, self.num_items))  # k < 0: none
        valid = top.values > -np.inf
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
        """The k items whose learned embeddings are closest in cosine similarity (the item itself excluded)."""
        items, known = self._items(item_id)
        vectors = tf.cast(item_embeddings(self.model), tf.float32)
        vectors = vectors / (tf.norm(vectors, axis=-1, keepdims=True) + 1e-12)
        sims = tf.matmul(tf.gather(vectors, items), vectors, transpose_b=True)
        sims = tf.where(tf.one_hot(items, self.num_items, on_value=True, off_value=False), -np.inf, sims)
        top = tf.math.top_k(sims, tf.clip_by_value(k, 0, self.num_items - 1))
        valid = (top.values > -np.inf) & known[:, None]
        ids, titles = self._named(top.indices, valid)
        return {"item_id": ids, "title": titles, "similarity": tf.where(valid, top.values, 0.0), "known_item": known}


def popularity(split: Split, train_only=False) -> np.ndarray:
    """Share of users who interacted with each item (training interactions only, for TopPop)."""
    items = split.train_items if train_only else split.seen_items
    return np.bincount(items, minlength=split.num_items) / max(split.num_users, 1)


def serving_endpoints(cfg, model, data: Data):
    """What the export tracks (the `Recommender` layer, holding the model) and its signatures on raw IDs.

    `recommend` comes first, so it is also `serving_default`.
    """
    served = Recommender(model, data.split, data.titles, popularity(data.split))
    ids = tf.TensorSpec([None], tf.string, name="user_id")
    k = tf.TensorSpec([], tf.int32, name="k")
    items = tf.TensorSpec([None], tf.string, name="item_id")
    return served, {
        "recommend": (served.recommend, [ids, k]),
        "score": (served.score, [ids, items]),
        "similar_items": (served.similar_items, [items, k]),
    }


def verification_inputs(cfg, data: Data):
    """A few real users and items, and an unknown one of each, as each signature takes them."""
    s = data.split
    users = [s.user_ids[i].encode() for i in range(min(3, s.num_users))] + [b"\x00no such user"]
    items = [s.item_ids[i].encode() for i in range(min(3, s.num_items))] + [b"\x00no such item"]
    return {
        "recommend": {"user_id": users, "k": np.int32(10)},
        "score": {"user_id": users, "item_id": items},
        "similar_items": {"item_id": items, "k": np.int32(5)},
    }


# --------------------------------------------------------------------------- report


def _ranking(ranks: np.ndarray, k: int) -> tuple[float, float]:
    hit = ranks < k
    return float(hit.mean()), float((hit / np.log2(ranks + 2.0)).mean())


def report(cfg, model, data: Data):
    """TopPop on the same split (validation and test), and HR@K for K = 1..20 of the model against TopPop."""
    s = data.split
    pop = popularity(s, train_only=True)
    metrics = {}
    for prefix, candidates in (("val_", s.val_candidates), ("test_", s.test_candidates)):
        if len(candidates) == 0:
            continue
        ranks = held_out_ranks(pop[candidates])
        for k in cfg.data.top_k:
            metrics[f"{prefix}toppop_hr_at_{k}"], metrics[f"{prefix}toppop_ndcg_at_{k}"] = _ranking(ranks, k)
    if data.test is None:
        return metrics, {}
    scores = np.concatenate([np.asarray(model(x, training=False)) for x, _ in data.test])  # one call per batch of users
    model_ranks, pop_ranks = held_out_ranks(scores), held_out_ranks(pop[s.test_candidates])
    figure = hit_rate_figure(model_ranks, pop_ranks, cfg.model.name, s.test_candidates.shape[1])
    return metrics, {"hit_rate_at_k.png": figure}


def hit_rate_figure(model_ranks, pop_ranks, model_name, candidates):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, 21)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [(model_ranks < k).mean() for k in ks], marker="o", label=model_name)
    ax.plot(ks, [(pop_ranks < k).mean() for k in ks], marker="s", label="TopPop")
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K (test)")
    ax.set_title(f"held-out item among {candidates} candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- predict


def csv_fields(row) -> list[str]:
    return list(row)


def _read_ids(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--users-file `{path}`: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--users-file `{path}`: not UTF-8 text ({e.reason} at byte {e.start}); expected one user ID "
                        "per line") from None
    except OSError as e:
        raise UserError(f"--users-file `{path}`: cannot be read ({e.strerror or e})") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if ids and ids[0].lower() in ("user_id", "user", "userid"):
        ids = ids[1:]  # a CSV column with its header
    if not ids:
        raise UserError(f"--users-file `{path}`: no user IDs in it (one per line)")
    return ids


def _id_bytes(value: str) -> bytes:
    """An ID from the command line as the export's bytes (bytes that are not UTF-8 arrive as surrogates: kept)."""
    return value.encode("utf-8", "surrogateescape")


def _shown(value: str) -> str:
    return _id_bytes(value).decode("utf-8", "replace")


def predict(loaded, metadata, args, report):
    """Recommendations for users (`--user`, `--users-file`) or similar items (`--similar-to`); one dict per result."""
    if args.inputs:
        raise UserError(f"a recommender export takes --user, --users-file or --similar-to, not inputs ({args.inputs[0]!r} ...)")
    users = list(args.user or []) + (_read_ids(args.users_file) if args.users_file else [])
    similar = list(args.similar_to or [])
    if not users and not similar:
        raise UserError("give --user USER_ID, --users-file FILE or --similar-to ITEM_ID")
    if args.k < 1:
        raise UserError(f"-k {args.k}: expected at least 1")
    k = tf.constant(min(args.k, 2**31 - 1), tf.int32)  # the export returns at most the whole catalogue
    batch = args.batch_size
    if batch < 1:
        raise UserError(f"--batch-size {batch}: expected at least 1 (users per call of the model)")
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        out = loaded.signatures["recommend"](user_id=tf.constant([_id_bytes(u) for u in chunk]), k=k)
        ids, titles, scores = out["item_id"].numpy(), out["title"].numpy(), out["score"].numpy()
        for row, user in enumerate(chunk):
            known = bool(out["known_user"].numpy()[row])
            if not known:
                print(f"user {user}: unknown to the model; most popular items instead", file=sys.stderr)
            for rank, (item, title, score) in enumerate(zip(ids[row], titles[row], scores[row]), 1):
                if item:
                    yield {"user_id": _shown(user), "rank": rank, "item_id": item.decode(), "title": title.decode(),
                           "score": round(float(score), 6), "known_user": known}
    for start in range(0, len(similar), batch):
        chunk = similar[start:start + batch]
        out = loaded.signatures["similar_items"](item_id=tf.constant([_id_bytes(i) for i in chunk]), k=k)
        ids, titles, sims = out["item_id"].numpy(), out["title"].numpy(), out["similarity"].numpy()
        for row, query in enumerate(chunk):
            if not bool(out["known_item"].numpy()[row]):
                report(query, "unknown item ID")
                continue
            for rank, (item, title, sim) in enumerate(zip(ids[row], titles[row], sims[row]), 1):
                if item:
                    yield {"similar_to": _shown(query), "rank": rank, "item_id": item.decode(), "title": title.decode(),
                           "similarity": round(float(sim), 6)}
