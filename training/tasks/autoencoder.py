"""Autoencoder: embeddings, reconstructions and calibrated anomaly scores. Everything the task needs around its model.

- data: frames through the frame task's pipeline (listing, decoding, corrupt-file
  skipping, caching; class folders are optional and labels ignored), or feature
  rows from a CSV, Parquet or .npy table -> `tf.data` of `(x, x)`, frames scaled
  to [0, 1] and feature rows standardised with the training rows' statistics;
- loss: per-input mean squared error (denoising adds noise inside the model);
- calibration, after training: the statistics of the anomaly score on the
  training data and the threshold, a percentile of the validation scores, all
  stored in the export;
- serving signatures: `is_anomaly` (also `serving_default`), `anomaly_score`,
  `encode`, `reconstruct`; frames go in as encoded JPEG/PNG bytes (any size:
  resized inside) and, for video, as decoded pixels (`analyse_pixels`);
- the report: originals beside reconstructions, the validation score histogram
  with the threshold;
- prediction for `reelml predict EXPORT INPUT... [--embed FILE] [--anomalies]`.

The anomaly score (`anomaly.score`):
- `mse`: the mean squared reconstruction error of the scaled input;
- `typicality`: how far the way the reconstruction misses the input lies from the
  way it misses the training inputs: the Mahalanobis distance of a few error
  statistics (`error_statistics`: the error's size, its spread over pixels,
  blocks and colour channels, the detail the autoencoder loses) from their
  training mean, divided by the square root of their number. Two-sided: an error
  far *below* the usual one means a frame with too little detail, such as a
  black or heavily blurred frame, which an autoencoder rebuilds all too well. A
  typical input scores about 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models import MODELS
from training.epochs import epoch_seeds
from training.errors import UserError
from training.tasks import frames

AUTOTUNE = tf.data.AUTOTUNE
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq", ".npy")
EMBED_EXTENSIONS = (".parquet", ".npy", ".csv")
_EPS = 1e-8


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    """The task's datasets, batched `(x, x)` in the model's scaled units, and what the export needs to know."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    train_steps: int  # batches per epoch
    kind: str  # "frames" or "table"
    input_shape: tuple  # one input, as the model takes it
    fingerprint: str
    counts: dict
    feature_names: list[str] | None = None  # table: the feature columns, in order
    id_column: str | None = None
    mean: np.ndarray | None = None  # table: standardisation of the training rows
    std: np.ndarray | None = None
    calibration: dict | None = None  # filled after training by `calibrate`
    reference: tf.data.Dataset | None = None  # the training inputs unshuffled and unaugmented: what the score is fitted on


def _list_images(root: Path, what: str) -> list[Path]:
    """Every image file under `root`, in any folder layout (class sub-folders are fine and ignored)."""
    if not root.exists():
        raise UserError(f"{what} `{root}`: folder not found")
    if not root.is_dir():
        raise UserError(f"{what} `{root}`: expected a folder of images, found a file")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in frames.IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{what} `{root}`: no image files ({', '.join(frames.IMAGE_EXTENSIONS)}) in it or below it")
    used = {p.relative_to(root).parts[0] for p in files}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in used):
        print(f"warning: {what} `{root}`: folder `{sub}` holds no images ({', '.join(frames.IMAGE_EXTENSIONS)}); "
              "nothing from it is used", file=sys.stderr, flush=True)
    return files


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
        fd = frames._load_tfds(cfg)
        splits, counts, fingerprint = (fd.train, fd.validation, fd.test), fd.counts, fd.fingerprint
        train_steps, reference = fd.train_steps, fd.train
    else:
        if d.source == "sample":
            from training.tasks.frames_sample import ensure_sample_frames

            root = ensure_sample_frames(d.sample_dir, seed=0)
            train_dir, test_dir = root / "train", root / "test"
        else:
            train_dir, test_dir = Path(d.train_dir), Path(d.test_dir) if d.test_dir else None
        files = _list_images(train_dir, "data.train_dir")
        train_items, val_items = frames._stratified_split({"frames": files}, d.validation_split, cfg.seed)
        test_items = [(p, 0) for p in _list_images(test_dir, "data.test_dir")] if test_dir is not None else []
        cache_dir = Path(run_dir) / "cache"
        batched, counts, skipped = {}, {}, []
        for split, items in (("train", train_items), ("validation", val_items), ("test", test_items)):
            if not items:
                batched[split] = None
                continue
            paths, labels = zip(*items)
            ds, n, bad = frames._cached_frames(list(paths), list(labels), d, cache_dir / split, f"data ({split} split)")
            shuffle = min(d.shuffle_buffer, n) if split == "train" else None
            batched[split], counts[split] = frames._batched(ds, d.batch_size, shuffle, cfg.seed), n
            if split == "train":
                reference = frames._batched(ds, d.batch_size)
            skipped += bad
        counts["skipped"] = len(skipped)
        if skipped:
            print(f"Skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}", flush=True)
        splits = (batched["train"], batched["validation"], batched["test"])
        train_steps = -(-counts["train"] // d.batch_size)
        fingerprint = frames._fingerprint_files(files, train_dir)
    train, validation, test = splits
    return Data(
        train=_to_pairs(train, flip=d.random_flip, shift=d.random_shift, zoom=d.random_zoom, seed=cfg.seed),
        validation=_to_pairs(validation) if validation is not None else None,
        test=_to_pairs(test) if test is not None else None,
        train_steps=train_steps,
        kind="frames",
        input_shape=(d.image_size, d.image_size, 3),
        fingerprint=fingerprint,
        counts={f"{k}_frames": v for k, v in counts.items()},
        reference=_to_pairs(reference),
    )


def read_table(path, columns=None, id_column=None, what="data.path"):
    """Reads feature rows from a CSV or Parquet file (with a header) or a 2-D .npy array.

    Args:
        path: the file.
        columns: feature columns to use, in this order; None: every column but `id_column`.
        id_column: a column naming each row, returned apart (None: rows are numbered).
        what: how the user named this file, for error messages.

    Returns:
        `(features float32 [rows, columns], column names, row IDs as strings)`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} `{path}`: file not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise UserError(f"{what} `{path}`: expected a {', '.join(TABLE_EXTENSIONS)} file, got `{suffix or 'no extension'}`")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"{what} `{path}`: not a readable .npy array ({e})") from None
        if array.ndim != 2 or array.dtype.kind not in "fiub":
            raise UserError(f"{what} `{path}`: expected a 2-D numeric array (rows x features), got shape {array.shape} "
                            f"of {array.dtype}")
        names = [f"f{i}" for i in range(array.shape[1])]
        if columns is not None and list(columns) != names:
            raise UserError(f"{what} `{path}`: a .npy array has no column names; expected {len(columns)} features "
                            f"named by position, got {array.shape[1]}")
        values, ids = array.astype(np.float32), [str(i) for i in range(len(array))]
        where = None
    else:
        import pandas as pd

        try:
            df = pd.read_parquet(path) if suffix in (".parquet", ".pq") else pd.read_csv(path)
        except Exception as e:  # pandas and pyarrow raise many types for damaged files
            raise UserError(f"{what} `{path}`: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        where = _csv_line if suffix == ".csv" else (lambda _, row: f"row {row + 1}")
        if id_column is not None and id_column not in df.columns:
            raise UserError(f"{what} `{path}`: no column `{id_column}` (data.id_column); columns: {list(df.columns)[:20]}")
        names = list(columns) if columns is not None else [str(c) for c in df.columns if c != id_column]
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise UserError(f"{what} `{path}`: no column(s) {missing}; columns: {list(df.columns)[:20]}")
        for name in names:
            if not pd.api.types.is_numeric_dtype(df[name]):
                row, bad = next((i, v) for i, v in enumerate(df[name]) if not _is_number(v))
                raise UserError(f"{what} `{path}`: {where(path, row)}: column `{name}` holds non-numeric values, e.g. {bad!r} "
                                "(list the feature columns in data.columns, or name the ID column in data.id_column)")
        values = df[names].to_numpy(np.float32)
        ids = [str(v) for v in df[id_column]] if id_column else [str(i) for i in range(len(df))]
    if len(values) == 0:
        raise UserError(f"{what} `{path}`: no rows")
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    if len(bad_rows):
        line = f"{where(path, bad_rows[0])}: " if where is _csv_line else ""
        raise UserError(f"{what} `{path}`: {line}row {bad_rows[0] + 1}, column `{names[bad_cols[0]]}`: missing or infinite "
                        f"value (found in {len(set(bad_rows))} row(s))")
    return values, names, ids


def _csv_line(path, row):
    """`line N` of the `row`-th data row (0-based) of a CSV file: pandas skips blank lines, so count them back in.

    (A quoted value that spans lines would shift the count; feature tables hold none.)
    """
    seen = -1  # the header is the first line that is not blank
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                if seen == row:
                    return f"line {number}"
                seen += 1
    return f"row {row + 1}"


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _load_table(cfg) -> Data:
    d = cfg.data
    path, test_path, columns, id_column = d.path, d.test_path, d.columns, d.id_column
    if d.source == "sample_table":
        from training.tasks.autoencoder_sample import FEATURES, ensure_sample_features

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
        return frames._batched(ds, d.batch_size, min(d.shuffle_buffer, len(rows)) if shuffle else None, cfg.seed)

    counts = {"train_rows": len(train), "validation_rows": len(validation), "test_rows": 0 if test is None else len(test)}
    print(f"Feature rows: {len(train)} training, {len(validation)} validation, {counts['test_rows']} test; "
          f"{len(names)} features", flush=True)
    return Data(
        train=pairs(train, shuffle=True),
        validation=pairs(validation),
        test=pairs(test) if test is not None else None,
        train_steps=-(-len(train) // d.batch_size),
        kind="table",
        input_shape=(len(names),),
        fingerprint=hashlib.sha256(np.ascontiguousarray(values).tobytes() + ",".join(names).encode()).hexdigest()[:16],
        counts=counts,
        feature_names=names,
        id_column=id_column,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        reference=pairs(train),
    )


def load_data(cfg, run_dir) -> Data:
    """Builds the train, validation and test datasets described by `cfg.data`."""
    if cfg.data.source in ("table", "sample_table"):
        return _load_table(cfg)
    return _load_frames(cfg, run_dir)


def data_tags(data: Data) -> dict:
    """Run tags describing the data: inputs per split, skipped files, input shape."""
    return {**{f"data.{k}": str(v) for k, v in data.counts.items()}, "data.input_shape": str(list(data.input_shape))}


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records for `reelml predict`: the input kind and features, the code size, the
    score (the threshold itself is a variable of the SavedModel: `is_anomaly` returns it)."""
    meta = {"input": data.kind, "input_shape": list(data.input_shape), "code_size": cfg.model.code_size,
            "anomaly_score": cfg.anomaly.score, "threshold_percentile": cfg.anomaly.threshold_percentile}
    if data.kind == "table":
        meta.update(feature_columns=data.feature_names, id_column=data.id_column)
    return meta


# --------------------------------------------------------------------------- model, loss, metrics


def build_model(cfg, data: Data) -> keras.Model:
    m = cfg.model
    output = m.output_activation if m.output_activation != "auto" else ("sigmoid" if data.kind == "frames" else "linear")
    common = {"input_shape": data.input_shape, "code_size": m.code_size, "noise_stddev": m.noise_stddev,
              "code_activation": m.code_activation, "output_activation": output, "l2": cfg.train.l2, "seed": cfg.seed}
    if m.name == "conv_autoencoder":
        return MODELS[m.name](filters=m.filters, convs_per_block=m.convs_per_block, kernel_size=m.kernel_size,
                              batch_norm=m.batch_norm, **common)
    return MODELS[m.name](hidden_units=m.hidden_units, decoder_units=m.decoder_units, **common)


def _per_input_mse(y_true, y_pred):
    axes = list(range(1, len(y_pred.shape)))
    return tf.reduce_mean(tf.square(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)), axis=axes)


def make_loss(cfg, data: Data):
    """Per-input mean squared error between the (clean) input and its reconstruction."""
    return _per_input_mse


def make_metrics(cfg, data: Data):
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def make_eval_metrics(cfg, data: Data):
    return make_metrics(cfg, data)


# --------------------------------------------------------------------------- calibration and the score


def _log(x):
    return tf.math.log(x + _EPS)


def _detail(images):
    """Mean absolute difference between neighbouring pixels: how much fine detail a frame holds."""
    return (tf.reduce_mean(tf.abs(images[:, 1:] - images[:, :-1]), axis=[1, 2, 3])
            + tf.reduce_mean(tf.abs(images[:, :, 1:] - images[:, :, :-1]), axis=[1, 2, 3]))


def error_statistics(x, reconstruction, kind):
    """What the typicality score looks at: `[batch, statistics]`, the logs of how the reconstruction misses its input.

    Every input: the mean squared and mean absolute error, and how the error is spread (its 99th percentile for
    frames, its largest feature error for rows). Frames also: the error of the worst colour channel and of the worst
    channel per pixel against the mean (a dropped or wrong channel), the spread of the error over 8x8 blocks (local
    damage such as broken JPEG blocks), the frame's own detail and the detail the autoencoder loses (black and
    blurred frames hold almost none and lose nothing).
    """
    x, reconstruction = tf.cast(x, tf.float32), tf.cast(reconstruction, tf.float32)
    squared = tf.square(x - reconstruction)
    batch = tf.shape(squared)[0]
    flat = tf.reshape(squared, [batch, -1])
    mse = tf.reduce_mean(flat, axis=1)
    stats = [_log(mse), _log(tf.reduce_mean(tf.abs(tf.reshape(x - reconstruction, [batch, -1])), axis=1))]
    if kind == "table":
        return tf.stack(stats + [_log(tf.reduce_max(flat, axis=1))], axis=1)
    top = max(1, math.prod(squared.shape[1:]) // 100)  # frames have a static size here: resized first
    per_channel = tf.reduce_mean(squared, axis=[1, 2])
    blocks = tf.nn.avg_pool2d(tf.reduce_mean(squared, axis=-1, keepdims=True), 8, 8, "VALID")
    stats += [
        _log(tf.math.top_k(flat, top).values[:, -1]),  # 99th percentile of the squared error
        _log(tf.reduce_max(per_channel, axis=1)) - _log(tf.reduce_mean(per_channel, axis=1)),
        _log(tf.reduce_mean(tf.reduce_max(squared, axis=-1), axis=[1, 2])) - _log(mse),
        _log(tf.math.reduce_std(tf.reshape(blocks, [batch, -1]), axis=1)) - _log(mse),
        _log(tf.reduce_max(tf.reshape(blocks, [batch, -1]), axis=1)),
        _log(_detail(x)),
        _log(_detail(x)) - _log(_detail(reconstruction)),
    ]
    return tf.stack(stats, axis=1)


def anomaly_scores(kind, mse, statistics, mean, precision):
    """`mse`: the mean squared error. `typicality`: the Mahalanobis distance of the error statistics from the training
    inputs' (`mean`, `precision`), divided by the square root of their number: a typical input scores about 1."""
    if kind == "mse":
        return mse
    centred = statistics - mean
    d2 = tf.reduce_sum(tf.matmul(centred, precision) * centred, axis=1)
    return tf.sqrt(tf.maximum(d2, 0.0) / tf.cast(tf.shape(statistics)[1], tf.float32))


def _analyse(model, x, kind):
    """(code, reconstruction, per-input mse, error statistics) of scaled inputs."""
    code = tf.cast(model.get_layer("encoder")(x, training=False), tf.float32)
    reconstruction = tf.cast(model.get_layer("decoder")(code, training=False), tf.float32)
    return code, reconstruction, _per_input_mse(x, reconstruction), error_statistics(x, reconstruction, kind)


def _statistics_of(model, dataset, kind):
    step = tf.function(lambda x: _analyse(model, x, kind)[2:], reduce_retracing=True)
    mses, stats = zip(*[[t.numpy() for t in step(x)] for x, _ in dataset])
    return np.concatenate(mses), np.concatenate(stats)


def calibrate(cfg, model, data: Data) -> dict:
    """Fits the score on the training inputs, then sets the threshold on the validation inputs.

    The typicality score's mean and (slightly regularised, always invertible) covariance of the error statistics
    come from the training inputs; the threshold is the `anomaly.threshold_percentile` percentile of the validation
    inputs' scores. Called after training (by the report, and by the export if the report did not run); kept in
    `data.calibration` and stored in the export.
    """
    if data.calibration is not None and data.calibration["model"] is model:
        return data.calibration
    # The training inputs as they are, in a fixed order: the same statistics in every process and every run.
    _, train_stats = _statistics_of(model, data.reference, data.kind)
    cov = np.atleast_2d(np.cov(train_stats.astype(np.float64), rowvar=False))
    cov += 1e-3 * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
    mean, precision = train_stats.mean(axis=0).astype(np.float32), np.linalg.inv(cov).astype(np.float32)
    val_mse, val_stats = _statistics_of(model, data.validation, data.kind)
    val_scores = anomaly_scores(cfg.anomaly.score, tf.constant(val_mse), tf.constant(val_stats), mean, precision).numpy()
    threshold = float(np.percentile(val_scores.astype(np.float64), cfg.anomaly.threshold_percentile))
    data.calibration = {"model": model, "mean": mean, "precision": precision, "threshold": threshold,
                        "val_scores": val_scores, "val_errors": val_mse}
    return data.calibration


def scores_of(cfg, model, data: Data, dataset):
    """(scores, mse) of every input of a dataset, with the calibrated score."""
    calibration = calibrate(cfg, model, data)
    mse, stats = _statistics_of(model, dataset, data.kind)
    scores = anomaly_scores(cfg.anomaly.score, tf.constant(mse), tf.constant(stats), calibration["mean"], calibration["precision"])
    return scores.numpy(), mse


# --------------------------------------------------------------------------- serving


class ServedAutoencoder(keras.layers.Layer):
    """The served autoencoder: raw inputs in (frames in [0, 255], feature rows in their own units), the trained
    model, the scaling, the score's statistics and the calibrated threshold inside, as variables."""

    def __init__(self, model, kind, score, calibration, mean=None, std=None):
        super().__init__(name="served_autoencoder")
        self.model, self.kind, self.score_kind = model, kind, score
        constant = lambda value, name: tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)  # noqa: E731
        self.threshold = constant(calibration["threshold"], "threshold")
        self.statistics_mean = constant(calibration["mean"], "statistics_mean")
        self.statistics_precision = constant(calibration["precision"], "statistics_precision")
        if kind == "table":
            self.mean, self.std = constant(mean, "feature_mean"), constant(std, "feature_std")
        self.built = True

    def _scale(self, x):
        x = tf.cast(x, tf.float32)
        return (x - self.mean) / self.std if self.kind == "table" else x / 255.0

    def _unscale(self, y):
        if self.kind == "table":
            return y * self.std + self.mean
        # Float pixels in [0, 255], not rounded to uint8: rounding would make the output jump by a whole level
        # where float noise crosses .5 (an export reloaded elsewhere must give the same answer).
        return tf.clip_by_value(y * 255.0, 0.0, 255.0)

    def analyse(self, raw):
        """Every output for a batch of raw inputs (frames already resized); an empty batch gives empty outputs."""
        raw, n = frames.not_empty(raw)  # some kernels fail on a batch of none
        code, reconstruction, mse, statistics = _analyse(self.model, self._scale(raw), self.kind)
        score = anomaly_scores(self.score_kind, mse, statistics, self.statistics_mean, self.statistics_precision)
        outputs = {"embedding": code, "reconstruction": self._unscale(reconstruction), "reconstruction_error": mse,
                   "score": score, "is_anomaly": score > self.threshold,
                   "threshold": tf.fill(tf.shape(score), tf.convert_to_tensor(self.threshold))}
        return {k: v[:n] for k, v in outputs.items()}


_OUTPUTS = {
    "is_anomaly": ("is_anomaly", "score", "threshold"),
    "anomaly_score": ("score", "reconstruction_error"),
    "encode": ("embedding",),
    "reconstruct": ("reconstruction",),
}


def serving_endpoints(cfg, model, data: Data):
    """What the export tracks (the `ServedAutoencoder` layer) and its signatures.

    `is_anomaly` comes first, so it is also `serving_default`. Frames: each signature takes encoded JPEG/PNG bytes
    (`images`, any size: decoded to RGB and resized to `data.image_size` inside), and `analyse_pixels` takes decoded
    uint8 frames of any size and returns every output. Feature rows: each takes `features`, float32
    `[batch, len(feature_columns)]` in the table's own units.
    """
    served = ServedAutoencoder(model, data.kind, cfg.anomaly.score, calibrate(cfg, model, data), data.mean, data.std)

    if data.kind == "table":
        def on_features(keys):
            def endpoint(features):
                # Signatures do not check the shape of what they are given: say clearly what was expected.
                outputs = served.analyse(tf.ensure_shape(features, [None, len(data.feature_names)], name="features"))
                return {k: outputs[k] for k in keys}
            return endpoint

        spec = [tf.TensorSpec([None, len(data.feature_names)], tf.float32, name="features")]
        return served, {name: (on_features(keys), spec) for name, keys in _OUTPUTS.items()}

    size = cfg.data.image_size

    def decode_one(blob):
        image = tf.io.decode_image(blob, channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size), antialias=True)

    def from_images(images):
        images = tf.ensure_shape(images, [None], name="images")
        return served.analyse(tf.map_fn(decode_one, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)))

    def from_pixels(pixels):
        pixels = tf.ensure_shape(pixels, [None, None, None, 3], name="pixels")
        pixels, n = frames.not_empty(pixels)  # [0, 0, 0, 3] cannot be resized
        outputs = served.analyse(tf.image.resize(tf.cast(pixels, tf.float32), (size, size), antialias=True))
        return {k: v[:n] for k, v in outputs.items()}

    def on_images(keys):
        def endpoint(images):
            outputs = from_images(images)
            return {k: outputs[k] for k in keys}
        return endpoint

    spec = [tf.TensorSpec([None], tf.string, name="images")]
    endpoints = {name: (on_images(keys), spec) for name, keys in _OUTPUTS.items()}
    endpoints["analyse_pixels"] = (from_pixels, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    return served, endpoints


def verification_inputs(cfg, data: Data):
    """A few real inputs, as each signature takes them (frames also at another size), to check the export."""
    x = next(iter(data.validation.unbatch().batch(4)))[0].numpy()
    if data.kind == "table":
        features = x * data.std + data.mean
        return {name: {"features": features} for name in _OUTPUTS}
    pixels = np.round(x * 255).astype(np.uint8)
    images = [tf.io.encode_png(p).numpy() for p in pixels] + [tf.io.encode_jpeg(np.repeat(pixels[0], 2, axis=0)).numpy()]
    return {**{name: {"images": images} for name in _OUTPUTS}, "analyse_pixels": {"pixels": pixels}}


# --------------------------------------------------------------------------- report


def report(cfg, model, data: Data):
    """Calibrates the threshold; logs it, the share of inputs it flags, and two figures.

    Figures: originals beside their reconstructions (test inputs, else validation), and the histogram of the
    validation scores with the threshold.
    """
    calibration = calibrate(cfg, model, data)
    metrics = {"anomaly_threshold": calibration["threshold"],
               "val_anomaly_rate": float(np.mean(calibration["val_scores"] > calibration["threshold"])),
               "val_reconstruction_mse": float(np.mean(calibration["val_errors"]))}
    shown = data.test if data.test is not None else data.validation
    if data.test is not None:
        scores, errors = scores_of(cfg, model, data, data.test)
        metrics["test_anomaly_rate"] = float(np.mean(scores > calibration["threshold"]))
        metrics["test_reconstruction_mse"] = float(np.mean(errors))
    inputs = np.concatenate([x.numpy() for x, _ in shown])
    x = inputs[np.linspace(0, len(inputs) - 1, min(8, len(inputs))).astype(int)]  # spread over the set (often sorted by class)
    reconstruction = np.asarray(model(x, training=False))
    figures = {"reconstructions.png": reconstruction_figure(x, reconstruction, data),
               "anomaly_scores.png": score_histogram(calibration["val_scores"], calibration["threshold"], cfg.anomaly)}
    return metrics, figures


def reconstruction_figure(originals, reconstructions, data: Data):
    """Frames: originals on top, reconstructions below. Feature rows: both as heat maps (standardised units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    if data.kind == "frames":
        fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
        for i in range(n):
            for row, images in enumerate((originals, reconstructions)):
                axes[row, i].imshow(np.clip(images[i], 0, 1))
                axes[row, i].axis("off")
        axes[0, 0].set_title("original", fontsize=8, loc="left")
        axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(8, 0.6 + 0.3 * n), squeeze=False)
        limit = max(float(np.abs(originals).max()), 1e-6)
        for ax, values, title in zip(axes[0], (originals, reconstructions), ("original", "reconstruction")):
            ax.imshow(values, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
            ax.set_title(f"{title} (standardised)", fontsize=9)
            ax.set_xlabel("feature")
            ax.set_ylabel("row")
    fig.tight_layout()
    return fig


def score_histogram(scores, threshold, anomaly_cfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(scores, bins=min(50, max(10, len(scores) // 5)), color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g} "
               f"({anomaly_cfg.threshold_percentile:g}th percentile)")
    ax.set_xlabel(f"anomaly score ({anomaly_cfg.score})")
    ax.set_ylabel("validation inputs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- predict


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them; table rows have their own)."""
    if "row" in row:
        return ["source", "row", "id", "score", "is_anomaly"]
    return ["source", "frame", "timecode", "score", "is_anomaly"]


def _check_embed_path(path):
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in EMBED_EXTENSIONS:
        raise UserError(f"--embed `{path}`: expected a {', '.join(EMBED_EXTENSIONS)} file name")
    if not path.resolve().parent.is_dir():
        raise UserError(f"--embed `{path}`: folder `{path.resolve().parent}` does not exist")
    return path


def write_embeddings(path: Path, sources: list[dict], embeddings: np.ndarray):
    """Writes one embedding per input: .npy (the array; rows in the order of the predictions), or .parquet / .csv
    (the input's source columns, then `e0` ... `e{k-1}`)."""
    if path.suffix.lower() == ".npy":
        np.save(path, embeddings.astype(np.float32))
        return
    import pandas as pd

    df = pd.DataFrame(sources)
    for j in range(embeddings.shape[1]):
        df[f"e{j}"] = embeddings[:, j]
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


def _frame_rows(loaded, args, report, want_embedding):
    """(source dict, outputs of one input) for image files and sampled video frames."""
    classify_images, encode_images = loaded.signatures["is_anomaly"], loaded.signatures["encode"]
    analyse_pixels = loaded.signatures["analyse_pixels"]

    def run_images(blobs):
        out = {k: v.numpy() for k, v in classify_images(images=tf.constant(blobs)).items()}
        if want_embedding:
            out["embedding"] = encode_images(images=tf.constant(blobs))["embedding"].numpy()
        return out

    def run_pixels(pixels):
        return {k: v.numpy() for k, v in analyse_pixels(pixels=tf.constant(pixels)).items()}

    return frames.frame_outputs(args, report, run_images, run_pixels)


def _table_rows(loaded, metadata, args, want_embedding):
    columns, id_column = metadata["feature_columns"], metadata.get("id_column")
    classify, encode = loaded.signatures["is_anomaly"], loaded.signatures["encode"]
    batch = args.batch_size
    if batch < 1:
        raise UserError(f"--batch-size {batch}: expected at least 1 (inputs per call of the model)")
    for raw in args.inputs:
        path = Path(raw)
        if path.suffix.lower() == ".npy":
            columns_here, id_here = [f"f{i}" for i in range(len(columns))], None
        else:
            columns_here, id_here = columns, id_column
        values, _, ids = read_table(path, columns_here, id_here, what="input")
        for start in range(0, len(values), batch):
            features = tf.constant(values[start:start + batch])
            out = {k: v.numpy() for k, v in classify(features=features).items()}
            if want_embedding:
                out["embedding"] = encode(features=features)["embedding"].numpy()
            for i in range(len(out["score"])):
                yield {"source": str(path), "row": start + i + 1, "id": ids[start + i]}, {k: v[i] for k, v in out.items()}


def predict(loaded, metadata, args, report):
    """Scores frames (image files, folders, video frames) or feature rows; yields one dict per input.

    `--anomalies` keeps only the inputs over the export's threshold; `--embed FILE` also writes every input's
    embedding. Unreadable files are passed to `report(path, reason)` and skipped.
    """
    anomalies_only = getattr(args, "anomalies", False)
    embed_path = _check_embed_path(getattr(args, "embed", None))
    kind = metadata.get("input")
    if not args.inputs:
        what = "feature table (.csv, .parquet, .npy)" if kind == "table" else "image file, folder of images or video"
        raise UserError(f"give at least one {what} to score")
    if kind == "table":
        for flag, value in (("--every-seconds", args.every_seconds), ("--every-frames", args.every_frames)):
            if value is not None:
                raise UserError(f"{flag}: this export scores feature rows, not video frames")
        for raw in args.inputs:
            if Path(raw).suffix.lower() not in TABLE_EXTENSIONS:
                raise UserError(f"input `{raw}`: this export scores feature rows; expected a {', '.join(TABLE_EXTENSIONS)} file")
        results = _table_rows(loaded, metadata, args, embed_path is not None)
    else:
        results = _frame_rows(loaded, args, report, embed_path is not None)

    sources, embeddings, flagged, total, threshold = [], [], 0, 0, None
    for source, out in results:
        if embed_path is not None:
            sources.append(source)
            embeddings.append(out["embedding"])
        flag = bool(out["is_anomaly"])
        flagged, total, threshold = flagged + flag, total + 1, float(out["threshold"])
        if flag or not anomalies_only:
            yield {**source, "score": round(float(out["score"]), 6), "is_anomaly": flag}
    if total:
        print(f"{flagged} of {total} input(s) flagged as anomalies (score > threshold {threshold:.4g})", file=sys.stderr)
    if embed_path is not None:
        if embeddings:
            write_embeddings(embed_path, sources, np.stack(embeddings))
        print(f"{len(embeddings)} embedding(s) of size {metadata.get('code_size')} written to {embed_path}", file=sys.stderr)
