"""Frames: classify video frames. Everything the task needs around its model lives here.

- data: class-per-folder image files, tfds names or generated sample frames ->
  cached, shuffled, batched `tf.data` of `(float32 pixels in [0, 255], int32 label)`;
- loss and metrics;
- serving signatures: encoded JPEG/PNG bytes in, labels out (and decoded pixels in);
- the evaluation report (confusion matrix);
- prediction over image files, folders and videos for `reelml predict`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from models import MODELS
from training.epochs import epoch_seeds
from training.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mxf", ".mpg", ".mpeg")
AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    """The task's datasets, batched, and what the run should record about them."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    train_steps: int  # batches per epoch
    class_names: list[str]
    fingerprint: str  # hash of the training data: which frames made this model
    counts: dict  # frames per split, skipped files


def _list_class_folders(root: Path, what: str) -> dict[str, list[Path]]:
    if not root.exists():
        raise UserError(f"{what} `{root}`: folder not found")
    if not root.is_dir():
        raise UserError(f"{what} `{root}`: expected a folder of class sub-folders, found a file")
    classes, empty = {}, []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            classes[sub.name] = files
        else:
            empty.append(sub)
    if len(classes) < 2:
        raise UserError(
            f"{what} `{root}`: expected at least 2 class sub-folders holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}), found {len(classes)}"
            + (f"; empty: {', '.join(f'`{p}`' for p in empty)}" if empty else "")
        )
    for sub in empty:  # a class whose frames were not copied (yet) should not vanish unnoticed
        print(f"warning: {what} `{root}`: class folder `{sub}` holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
              f"class `{sub.name}` is left out", file=sys.stderr, flush=True)
    return classes


def _fingerprint_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(str(p.relative_to(root)).encode())
        digest.update(hashlib.sha1(p.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _decode(path, label, size):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return _resize_uint8(image, size), label, path


def _resize_uint8(image, size):
    # Antialiased: shrinking 150 px frames to 64 px without it aliases fine texture (foliage, waves).
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _cached_frames(paths, labels, cfg, cache_file, what):
    """Decodes, resizes and caches frames once; returns (dataset, frame count, skipped paths).

    Unreadable files are dropped by `ignore_errors`; the pass that fills the cache
    also tells which ones, so they are reported by name (or stop the run).
    """
    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, np.int32)))
    ds = ds.map(lambda p, y: _decode(p, y, cfg.image_size), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    if cfg.cache == "memory":
        ds = ds.cache()
    elif cfg.cache == "disk":
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(cache_file))
    seen = set()
    for _, _, batch_paths in ds.batch(512):  # fills the cache; later epochs read decoded frames
        seen.update(p.decode() for p in batch_paths.numpy())
    skipped = [str(p) for p in paths if str(p) not in seen]
    if skipped and cfg.on_bad_file == "error":
        raise UserError(
            f"{what}: {len(skipped)} image file(s) could not be decoded, e.g. `{skipped[0]}` "
            "(set data.on_bad_file: skip to skip and count them)"
        )
    if not seen:
        raise UserError(f"{what}: none of the {len(paths)} image files could be decoded")
    ds = ds.map(lambda x, y, p: (x, y)).apply(tf.data.experimental.assert_cardinality(len(seen)))
    return ds, len(seen), skipped


def _stratified_split(files_by_class, fraction, seed):
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, files in enumerate(files_by_class.values()):
        order = rng.permutation(len(files))
        n_val = int(round(fraction * len(files)))
        for rank, i in enumerate(order):
            (val if rank < n_val else train).append((files[i], label))
    return train, val


def _batched(ds, batch_size, shuffle_buffer=None, seed=None):
    if shuffle_buffer:  # a new order every epoch, the same order for the same epoch after a restart
        frames, count = ds, ds.cardinality()
        ds = epoch_seeds(seed).flat_map(lambda s: frames.shuffle(shuffle_buffer, seed=s))
        ds = ds.apply(tf.data.experimental.assert_cardinality(count)) if count >= 0 else ds
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def load_data(cfg, run_dir) -> Data:
    """Builds the train, validation and test datasets described by `cfg.data`."""
    d = cfg.data
    if d.source == "tfds":
        return _load_tfds(cfg)
    if d.source == "sample":
        from training.tasks.frames_sample import ensure_sample_frames

        root = ensure_sample_frames(d.sample_dir, seed=0)
        train_dir, test_dir = root / "train", root / "test"
    else:
        train_dir, test_dir = Path(d.train_dir), Path(d.test_dir) if d.test_dir else None

    by_class = _list_class_folders(train_dir, "data.train_dir")
    class_names = list(by_class)
    train_items, val_items = _stratified_split(by_class, d.validation_split, cfg.seed)
    test_items = []
    if test_dir is not None:
        test_by_class = _list_class_folders(test_dir, "data.test_dir")
        unknown = sorted(set(test_by_class) - set(class_names))
        if unknown:
            empty = [c for c in unknown if (train_dir / c).is_dir()]
            raise UserError(
                f"data.test_dir `{test_dir}`: class folder(s) {unknown} do not exist in data.train_dir `{train_dir}` "
                f"(training classes: {class_names})" + (f"; {empty} hold no images there" if empty else "")
            )
        test_items = [(p, class_names.index(c)) for c, files in test_by_class.items() for p in files]

    cache_dir = Path(run_dir) / "cache"
    splits, counts, skipped = {}, {}, []
    for split, items in (("train", train_items), ("validation", val_items), ("test", test_items)):
        if not items:
            splits[split] = None
            continue
        paths, labels = zip(*items)
        ds, n, bad = _cached_frames(list(paths), list(labels), d, cache_dir / split, f"data ({split} split)")
        splits[split], counts[split] = ds, n
        skipped += bad
    counts["skipped"] = len(skipped)
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}", flush=True)
    all_files = [p for files in by_class.values() for p in files]
    return Data(
        train=_batched(splits["train"], d.batch_size, min(d.shuffle_buffer, counts["train"]), cfg.seed),
        validation=_batched(splits["validation"], d.batch_size) if splits["validation"] is not None else None,
        test=_batched(splits["test"], d.batch_size) if splits["test"] is not None else None,
        train_steps=-(-counts["train"] // d.batch_size),
        class_names=class_names,
        fingerprint=_fingerprint_files(all_files, train_dir),
        counts=counts,
    )


def _load_tfds(cfg) -> Data:
    import tensorflow_datasets as tfds

    d = cfg.data
    n_val = int(round(100 * d.validation_split))
    train_split = f"{d.tfds_train_split}[{n_val}%:]" if n_val else d.tfds_train_split
    splits = [train_split] + ([f"{d.tfds_train_split}[:{n_val}%]"] if n_val else []) + (
        [d.tfds_test_split] if d.tfds_test_split else []
    )
    try:
        builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir)
        if d.tfds_download:
            builder.download_and_prepare()
        info = builder.info
        image_key, label_key = info.supervised_keys if info.supervised_keys else ("image", "label")
        label = info.features[label_key] if label_key in info.features else None
        if label is None or not hasattr(label, "names") or image_key not in info.features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: expected an (image, class label) dataset, "
                            f"found features {list(info.features)}")
        datasets = [builder.as_dataset(split=s, shuffle_files=False).map(lambda e: (e[image_key], e[label_key]))
                    for s in splits]
    except UserError:
        raise
    except Exception as e:  # tfds raises many types (registry, download, missing files)
        raise UserError(
            f"data.tfds_name `{d.tfds_name}`: could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "Without internet, point data.tfds_data_dir at a prepared tfds directory and set data.tfds_download: false"
        ) from None

    def prepare(ds):
        ds = ds.map(
            lambda x, y: (_resize_uint8(x, d.image_size), tf.cast(y, tf.int32)),
            num_parallel_calls=AUTOTUNE,
        )
        return ds.cache() if d.cache == "memory" else ds

    prepared = [prepare(ds) for ds in datasets]
    train = prepared[0]
    val = prepared[1] if n_val else None
    test = prepared[-1] if d.tfds_test_split else None
    n_train = int(train.cardinality())
    if n_train < 0:  # unknown: count once (this also fills the cache)
        n_train = sum(int(tf.shape(x)[0]) for x, _ in train.batch(4096))
    counts = {"train": n_train, "skipped": 0}
    return Data(
        train=_batched(train, d.batch_size, min(d.shuffle_buffer, n_train), cfg.seed),
        validation=_batched(val, d.batch_size) if val is not None else None,
        test=_batched(test, d.batch_size) if test is not None else None,
        train_steps=-(-n_train // d.batch_size),
        class_names=list(label.names),
        fingerprint=hashlib.sha256(f"{info.full_name}:{train_split}".encode()).hexdigest()[:16],
        counts=counts,
    )


# --------------------------------------------------------------------------- model, loss, metrics


def build_model(cfg, data: Data) -> keras.Model:
    params = cfg.model.model_dump(exclude={"name"})
    return MODELS[cfg.model.name](num_classes=len(data.class_names), l2=cfg.train.l2, seed=cfg.seed, **params)


def make_loss(cfg, data: Data):
    """Per-example cross-entropy (label smoothing needs one-hot targets)."""
    crossentropy = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing, reduction=None)
    num_classes = len(data.class_names)

    def loss(y_true, y_pred):
        return crossentropy(tf.one_hot(tf.cast(y_true, tf.int32), num_classes), y_pred)

    return loss


def make_metrics(cfg, data: Data):
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def make_eval_metrics(cfg, data: Data):
    return make_metrics(cfg, data)


def data_tags(data: Data) -> dict:
    """Run tags describing the data: frames per split, skipped files."""
    return {f"data.{k}_frames": str(v) for k, v in data.counts.items()}


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records for `reelml predict`: the class names."""
    return {"class_names": data.class_names}


# --------------------------------------------------------------------------- serving


def not_empty(x):
    """`(x, n)`: a batch of no inputs becomes one input of zeros (some kernels fail on empty batches); slice the
    outputs `[:n]`."""
    shape = tf.shape(x)
    one = tf.concat([[1], tf.maximum(shape[1:], 1)], axis=0)
    padded = tf.cond(shape[0] > 0, lambda: x, lambda: tf.zeros(one, x.dtype))
    padded.set_shape(tf.TensorShape([None]).concatenate(x.shape[1:]))
    return padded, shape[0]


def _outputs(model, pixels, class_names):
    pixels, n = not_empty(pixels)
    probabilities = model(pixels, training=False)[:n]
    class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {
        "label": tf.gather(tf.constant(class_names), class_ids),
        "class_id": class_ids,
        "confidence": tf.reduce_max(probabilities, axis=-1),
        "probabilities": probabilities,
    }


def serving_endpoints(cfg, model, data: Data):
    """What the export tracks (the model) and its signatures: `serving_default` (encoded images) and
    `classify_pixels` (decoded uint8)."""
    size = cfg.model.input_size
    class_names = data.class_names

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size), antialias=True)

    def classify_images(images):
        # Signatures do not check the shape of what they are given: say clearly what was expected.
        images = tf.ensure_shape(images, [None], name="images")
        pixels = tf.map_fn(decode_one, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        return _outputs(model, pixels, class_names)

    def classify_pixels(pixels):
        pixels = tf.ensure_shape(pixels, [None, None, None, 3], name="pixels")
        return _outputs(model, tf.cast(pixels, tf.float32), class_names)

    return model, {
        "serving_default": (classify_images, [tf.TensorSpec([None], tf.string, name="images")]),
        "classify_pixels": (classify_pixels, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")]),
    }


def verification_inputs(cfg, data: Data):
    """A few real frames, as each signature takes them, to check the export against the model."""
    pixels = next(iter(data.train.unbatch().batch(4)))[0].numpy().astype(np.uint8)
    images = [tf.io.encode_png(p).numpy() for p in pixels]
    return {"serving_default": {"images": images}, "classify_pixels": {"pixels": pixels}}


# --------------------------------------------------------------------------- report


def report(cfg, model, data: Data):
    """Test metrics beyond the loop's: per-class accuracy and a confusion matrix figure."""
    ds = data.test if data.test is not None else data.validation
    if ds is None:
        return {}, {}
    y_true = np.concatenate([y.numpy() for _, y in ds])
    y_pred = np.argmax(model.predict(ds.map(lambda x, y: x), verbose=0), axis=-1)
    n = len(data.class_names)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    metrics = {f"test_accuracy_{name}": float(acc) for name, acc in zip(data.class_names, per_class)}
    return metrics, {"confusion_matrix.png": confusion_figure(confusion, data.class_names)}


def confusion_figure(confusion, class_names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    accuracy = confusion.trace() / max(confusion.sum(), 1)
    ax.set_title(f"test accuracy {accuracy:.3f} ({confusion.sum()} frames)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- predict


def _expand_inputs(inputs, report):
    """Files and folders -> (images, videos), in a stable order; a missing path is the user's error, a folder
    without images or videos is reported and skipped."""
    images, videos = [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"input `{raw}`: no such file or folder")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found = 0
        for p in candidates:
            suffix = p.suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                videos.append(p)
            elif suffix in IMAGE_EXTENSIONS or not path.is_dir():
                images.append(p)
            else:
                continue
            found += 1
        if not found:
            report(path, f"no image ({', '.join(IMAGE_EXTENSIONS)}) or video ({', '.join(VIDEO_EXTENSIONS)}) files in the folder")
    return images, videos


def _timecode(seconds):
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:06.3f}"


def _video_frames(path, every_seconds, every_frames):
    """Yields (frame index, seconds, RGB uint8 array) for the sampled frames of a video (PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        for index, frame in enumerate(container.decode(stream)):
            seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
            if every_frames:
                take = index % every_frames == 0
            else:
                take = seconds + 1e-6 >= next_time
                if take:
                    next_time += every_seconds * max(1, int((seconds - next_time) // every_seconds) + 1)
            if take:
                yield index, seconds, frame.to_ndarray(format="rgb24")


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them)."""
    return ["source", "frame", "timecode", "label", "confidence"] + (["top_k"] if "top_k" in row else [])


def _row(source, output, class_names, top_k):
    row = dict(source)
    row["label"] = output["label"].decode()
    row["confidence"] = round(float(output["confidence"]), 6)
    if (top_k or 1) > 1:  # --top-k unset: the label only
        probabilities = output["probabilities"]
        best = np.argsort(-probabilities)[:top_k]
        row["top_k"] = ";".join(f"{class_names[j]}:{probabilities[j]:.4f}" for j in best)
    return row


def frame_outputs(args, report, run_images, run_pixels):
    """Runs an export over `args.inputs` (image files, folders, videos) in batches of `args.batch_size`.

    Args:
        args: `reelml predict` arguments (inputs, batch_size, every_seconds, every_frames).
        report: called as `report(path, reason)` for each unreadable file, which is skipped.
        run_images: encoded images (list of bytes) -> dict of numpy arrays, one row per image.
        run_pixels: decoded video frames (uint8 `[n, h, w, 3]`) -> dict of numpy arrays, one row per frame.

    Yields:
        `(source, output)` per readable image or sampled frame: `source` holds the file (and the
        frame index and timecode for videos), `output` each array's row for that input.
    """
    if args.every_seconds is not None and args.every_frames is not None:
        raise UserError("--every-seconds and --every-frames: give one of them, not both")
    if args.every_seconds is not None and not (math.isfinite(args.every_seconds) and args.every_seconds > 0):
        raise UserError(f"--every-seconds must be > 0 and --every-frames >= 1 (got --every-seconds {args.every_seconds})")
    if args.every_frames is not None and args.every_frames < 1:
        raise UserError(f"--every-seconds must be > 0 and --every-frames >= 1 (got --every-frames {args.every_frames})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected at least 1 (inputs per call of the model)")
    images, videos = _expand_inputs(args.inputs, report)
    batch = args.batch_size

    def split(outputs, sources):
        return [(source, {k: v[i] for k, v in outputs.items()}) for i, source in enumerate(sources)]

    for start in range(0, len(images), batch):
        chunk, blobs = [], []
        for p in images[start : start + batch]:
            try:
                blobs.append(p.read_bytes())
                chunk.append(p)
            except OSError as e:
                report(p, e.strerror or str(e))
        if not chunk:
            continue
        try:
            yield from split(run_images(blobs), [{"source": str(p)} for p in chunk])
        except tf.errors.InvalidArgumentError:  # one bad file fails the batch: find it, keep the rest
            for p, blob in zip(chunk, blobs):
                try:
                    outputs = run_images([blob])
                except tf.errors.InvalidArgumentError:
                    report(p, "not a readable JPEG, PNG, GIF or BMP image")
                    continue
                yield from split(outputs, [{"source": str(p)}])

    every_seconds = 1.0 if args.every_seconds is None and args.every_frames is None else args.every_seconds
    for video in videos:
        pending, sources = [], []
        try:
            for index, seconds, pixels in _video_frames(video, every_seconds, args.every_frames):
                pending.append(pixels)
                sources.append({"source": str(video), "frame": index, "timecode": _timecode(seconds)})
                if len(pending) == batch:
                    yield from split(run_pixels(np.stack(pending)), sources)
                    pending, sources = [], []
        except Exception as e:  # PyAV raises its own error types for damaged or unknown files
            report(video, f"video could not be decoded ({type(e).__name__}: {e})")
        if pending:
            yield from split(run_pixels(np.stack(pending)), sources)


def predict(loaded, metadata, args, report):
    """Classifies image files, folders and video frames; yields one dict per image or sampled frame.

    Unreadable files are passed to `report(path, reason)` and skipped.
    """
    if not args.inputs:
        raise UserError("give at least one image file, folder of images or video to classify")
    if args.top_k is not None and args.top_k < 0:
        raise UserError(f"--top-k {args.top_k}: expected 0 or more (the k likeliest labels beside the label)")
    class_names = metadata["class_names"]
    classify_images, classify_pixels = loaded.signatures["serving_default"], loaded.signatures["classify_pixels"]

    def numpy(outputs):
        return {k: v.numpy() for k, v in outputs.items()}

    for source, output in frame_outputs(args, report, lambda blobs: numpy(classify_images(images=tf.constant(blobs))),
                                        lambda pixels: numpy(classify_pixels(pixels=tf.constant(pixels)))):
        yield _row(source, output, class_names, args.top_k)
