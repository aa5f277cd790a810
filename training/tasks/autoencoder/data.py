"""Autoencoder data: frames or feature rows -> batched `tf.data` of `(x, x)` in the model's scaled units.

- frames: through `training/tasks/images.py` (listing, decoding, corrupt-file skipping,
  caching; class folders are optional and labels ignored), scaled to [0, 1]; the
  training frames mirrored, shifted and zoomed at random (`data.random_*`);
- feature rows: a CSV, Parquet or .npy table (`tables.py`), standardised with the
  training rows' mean and standard deviation.

`Data.reference` holds the training inputs unshuffled and unaugmented: what the
anomaly score is fitted on (`score.calibrate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.epochs import epoch_seeds
from training.errors import UserError
from training.tasks import images
from training.tasks.autoencoder.tables import read_table
from training.tasks.base import TaskData

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class Data(TaskData):
    """The autoencoder's datasets, batched `(x, x)` in the model's scaled units, and what the export needs to know.

    Attributes:
        kind: `frames` or `table`.
        input_shape: one input, as the model takes it.
        feature_names: table: the feature columns, in order.
        id_column: table: the column naming each row, or None.
        mean: table: the training rows' mean, per feature (float32).
        std: table: their standard deviation (1 where a column is constant).
        reference: the training inputs unshuffled and unaugmented: what the score is fitted on.
    """

    kind: str
    input_shape: tuple
    feature_names: list[str] | None = None
    id_column: str | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    reference: tf.data.Dataset | None = None


def load_data(cfg, run_dir) -> Data:
    """Builds the train, validation and test datasets described by `cfg.data`.

    Args:
        cfg: the run config (`cfg.data.source`: `folders`, `sample`, `tfds`, `table` or `sample_table`).
        run_dir: the run folder; `cache: disk` writes under `run_dir/cache/`.

    Returns:
        The `Data`.

    Raises:
        UserError: a missing or malformed folder or table, unreadable frames, too few rows.
    """
    if cfg.data.source in ("table", "sample_table"):
        return _load_table(cfg)
    return _load_frames(cfg, run_dir)


def data_tags(data: Data) -> dict[str, str]:
    """Run tags describing the data: inputs per split, skipped files, input shape."""
    return {**{f"data.{k}": str(v) for k, v in data.counts.items()}, "data.input_shape": str(list(data.input_shape))}


# --------------------------------------------------------------------------- frames


def _to_pairs(ds, flip=False, shift=0.0, zoom=0.0, seed=None):
    """`(pixels in [0, 255], label)` batches -> `(x, x)` with x in [0, 1].

    Training frames are mirrored, shifted (edges reflected) and zoomed in at
    random, each frame its own way, from seeds keyed on (seed, epoch, batch): a
    resumed epoch sees the same frames again.
    """

    def scaled(x, _):
        x = x / 255.0
        return x, x

    if not flip and not shift and not zoom:
        return ds.map(scaled, num_parallel_calls=AUTOTUNE)

    def augment(index, batch, epoch_seed):
        x, _ = scaled(*batch)
        seeds = tf.random.experimental.stateless_split(tf.stack([epoch_seed, index]), 3)
        if flip:
            x = tf.image.stateless_random_flip_left_right(x, seeds[0])
        if shift:
            x = _random_shift(x, shift, seeds[1])
        if zoom:
            x = _random_zoom(x, zoom, seeds[2])
        return x, x

    def epoch(epoch_seed):
        return ds.enumerate().map(lambda i, batch: augment(i, batch, epoch_seed), num_parallel_calls=AUTOTUNE)

    return epoch_seeds(seed or 0).flat_map(epoch)


def _random_shift(frames, fraction, seed):
    """Shifts each frame of a batch by a whole number of pixels, up to `fraction` of its size, edges reflected."""
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    pad_y = tf.clip_by_value(tf.cast(fraction * tf.cast(height, tf.float32), tf.int32), 1, height - 1)
    pad_x = tf.clip_by_value(tf.cast(fraction * tf.cast(width, tf.float32), tf.int32), 1, width - 1)
    padded = tf.pad(frames, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([shape[0], 2], seed, minval=0, maxval=1, dtype=tf.float32)
    oy = tf.floor(offsets[:, 0] * tf.cast(2 * pad_y + 1, tf.float32))
    ox = tf.floor(offsets[:, 1] * tf.cast(2 * pad_x + 1, tf.float32))
    span_y, span_x = tf.cast(height + 2 * pad_y - 1, tf.float32), tf.cast(width + 2 * pad_x - 1, tf.float32)
    boxes = tf.stack([oy / span_y, ox / span_x, (oy + tf.cast(height - 1, tf.float32)) / span_y,
                      (ox + tf.cast(width - 1, tf.float32)) / span_x], axis=1)
    # Box corners on pixel centres: crop_and_resize copies the pixels exactly, one crop per frame.
    return tf.image.crop_and_resize(padded, boxes, tf.range(shape[0]), tf.stack([height, width]))


def _random_zoom(frames, fraction, seed):
    """Zooms each frame of a batch in: a square crop of `1 - fraction` to all of its side, at a random place, resized back."""
    shape = tf.shape(frames)
    draws = tf.random.stateless_uniform([shape[0], 3], seed, dtype=tf.float32)
    side = 1.0 - fraction * draws[:, 0]
    top, left = (1.0 - side) * draws[:, 1], (1.0 - side) * draws[:, 2]
    boxes = tf.stack([top, left, top + side, left + side], axis=1)  # side 1: the frame itself, pixel for pixel
    return tf.image.crop_and_resize(frames, boxes, tf.range(shape[0]), shape[1:3])


def _load_frames(cfg, run_dir) -> Data:
    d = cfg.data
    if d.source == "tfds":
        t = images.load_tfds(cfg)
        splits, counts, fingerprint = (t.train, t.validation, t.test), t.counts, t.fingerprint
        train_steps, reference = t.train_steps, t.train
    else:
        train_dir, test_dir = images.frame_folders(d)
        files = images.list_images(train_dir, "data.train_dir")
        train_items, val_items = images.stratified_split({"frames": files}, d.validation_split, cfg.seed)
        test_items = [(p, 0) for p in images.list_images(test_dir, "data.test_dir")] if test_dir is not None else []
        cached, counts = images.cached_splits({"train": train_items, "validation": val_items, "test": test_items},
                                              d, Path(run_dir) / "cache")
        splits = (images.batched(cached["train"], d.batch_size, min(d.shuffle_buffer, counts["train"]), cfg.seed),
                  images.batched(cached["validation"], d.batch_size), images.batched(cached["test"], d.batch_size))
        reference = images.batched(cached["train"], d.batch_size)
        train_steps = -(-counts["train"] // d.batch_size)
        fingerprint = images.fingerprint_files(files, train_dir)
    train, validation, test = splits
    return Data(
        train=_to_pairs(train, flip=d.random_flip, shift=d.random_shift, zoom=d.random_zoom, seed=cfg.seed),
        validation=_to_pairs(validation) if validation is not None else None,
        test=_to_pairs(test) if test is not None else None,
        train_steps=train_steps,
        fingerprint=fingerprint,
        counts={f"{k}_frames": v for k, v in counts.items()},
        kind="frames",
        input_shape=(d.image_size, d.image_size, 3),
        reference=_to_pairs(reference),
    )


# --------------------------------------------------------------------------- feature rows


def _load_table(cfg) -> Data:
    d = cfg.data
    path, test_path, columns, id_column = d.path, d.test_path, d.columns, d.id_column
    if d.source == "sample_table":
        from training.tasks.autoencoder.sample import FEATURES, ensure_sample_features

        root = ensure_sample_features(d.sample_table_dir)
        path, test_path, columns, id_column = root / "train.csv", root / "test.csv", list(FEATURES), "shot_id"
    values, names, _ = read_table(path, columns, id_column, "data.path")
    test = read_table(test_path, names, id_column, "data.test_path")[0] if test_path else None
    if len(values) < 4:
        raise UserError(f"data.path `{path}`: {len(values)} rows; expected at least 4 (training and validation rows)")
    order = np.random.default_rng(cfg.seed).permutation(len(values))
    n_val = max(1, round(d.validation_split * len(values)))
    train, validation = values[order[n_val:]], values[order[:n_val]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant column stays constant: nothing to divide

    def pairs(rows, shuffle=False):
        scaled = ((rows - mean) / std).astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((scaled, scaled))
        return images.batched(ds, d.batch_size, min(d.shuffle_buffer, len(rows)) if shuffle else None, cfg.seed)

    counts = {"train_rows": len(train), "validation_rows": len(validation), "test_rows": 0 if test is None else len(test)}
    print(f"Feature rows: {len(train)} training, {len(validation)} validation, {counts['test_rows']} test; "
          f"{len(names)} features", flush=True)
    return Data(
        train=pairs(train, shuffle=True),
        validation=pairs(validation),
        test=pairs(test) if test is not None else None,
        train_steps=-(-len(train) // d.batch_size),
        fingerprint=hashlib.sha256(np.ascontiguousarray(values).tobytes() + ",".join(names).encode()).hexdigest()[:16],
        counts=counts,
        kind="table",
        input_shape=(len(names),),
        feature_names=names,
        id_column=id_column,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        reference=pairs(train),
    )
