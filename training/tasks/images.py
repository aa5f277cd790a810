"""Frames on disk, as the frames and autoencoder tasks read them: list, decode, resize, cache, split, batch.

- listing: class-per-folder images (`list_class_folders`) or every image below a
  folder (`list_images`), with a warning for each folder that holds none;
- decoding: any JPEG, PNG, GIF or BMP to RGB, resized with antialiasing to a
  square of `data.image_size`, cached once (memory or disk) with unreadable files
  named or skipped (`cached_frames`, `cached_splits`);
- splitting and batching: a stratified validation split, batches of float32
  pixels in [0, 255] reshuffled every epoch from `epoch_seeds`;
- tfds image datasets (`load_tfds`);
- serving: the decode a signature runs on encoded bytes, and `not_empty`.

Video sampling and the inputs of `reelml predict` live in `training/tasks/video.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.epochs import epoch_seeds
from training.errors import UserError
from training.tasks.tfds_source import open_builder, tfds_errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mxf", ".mpg", ".mpeg")
AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------- listing


def frame_folders(cfg) -> tuple[Path, Path | None]:
    """The training and test folders that `cfg` (a data config) names; `source: sample` generates them first.

    Returns:
        `(train_dir, test_dir or None)`.
    """
    if cfg.source == "video":
        from training.tasks.footage import frame_folders as from_footage

        return from_footage(cfg)
    if cfg.source == "sample":
        from training.tasks.frames.sample import ensure_sample_frames  # the generator of the sample frames both tasks use

        root = ensure_sample_frames(cfg.sample_dir, seed=0)
        return root / "train", root / "test"
    return Path(cfg.train_dir), Path(cfg.test_dir) if cfg.test_dir else None


def list_class_folders(root: Path, what: str) -> dict[str, list[Path]]:
    """The image files of each class sub-folder of `root`; empty class folders are warned about and left out.

    Args:
        root: a folder of class sub-folders (images may be nested below each).
        what: how the user named this folder (a config key), for messages.

    Returns:
        `{class name: sorted image paths}`, classes in sorted order.

    Raises:
        UserError: `root` is missing, a file, or holds fewer than 2 classes with images.
    """
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


def list_images(root: Path, what: str) -> list[Path]:
    """Every image file under `root`, in any folder layout (class sub-folders are fine and ignored).

    Args:
        root: the folder; hidden files and folders are skipped.
        what: how the user named this folder (a config key), for messages.

    Returns:
        The image paths, sorted.

    Raises:
        UserError: `root` is missing, a file, or holds no image.
    """
    if not root.exists():
        raise UserError(f"{what} `{root}`: folder not found")
    if not root.is_dir():
        raise UserError(f"{what} `{root}`: expected a folder of images, found a file")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{what} `{root}`: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
    used = {p.relative_to(root).parts[0] for p in files}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in used):
        print(f"warning: {what} `{root}`: folder `{sub}` holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
              "nothing from it is used", file=sys.stderr, flush=True)
    return files


def fingerprint_files(paths: list[Path], root: Path) -> str:
    """A 16-hex-digit hash of the files' names (relative to `root`) and contents: which frames made a model."""
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(str(p.relative_to(root)).encode())
        digest.update(hashlib.sha1(p.read_bytes()).digest())
    return digest.hexdigest()[:16]


def stratified_split(files_by_class: dict[str, list], fraction: float, seed: int) -> tuple[list, list]:
    """Holds out `fraction` of each class, at random from `seed`.

    Args:
        files_by_class: `{class name: files}`; a class's label is its position.
        fraction: the share of each class held out for validation.
        seed: the shuffling seed (the same seed gives the same split).

    Returns:
        `(train, validation)`: lists of `(path, label)`.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, files in enumerate(files_by_class.values()):
        order = rng.permutation(len(files))
        n_val = int(round(fraction * len(files)))
        for rank, i in enumerate(order):
            (val if rank < n_val else train).append((files[i], label))
    return train, val


# --------------------------------------------------------------------------- decoding and caching


def resize_uint8(image, size: int):
    """Resizes images to `size x size` and rounds them back to uint8."""
    # Antialiased: shrinking 150 px frames to 64 px without it aliases fine texture (foliage, waves).
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _decode(path, label, size):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return resize_uint8(image, size), label, path


def cached_frames(paths, labels, cfg, cache_file, what):
    """Decodes, resizes and caches frames once.

    Unreadable files are dropped by `ignore_errors`; the pass that fills the cache
    also tells which ones, so they are reported by name (or stop the run).

    Args:
        paths: image files.
        labels: one int label per file.
        cfg: the data config (`image_size`, `cache`, `on_bad_file`).
        cache_file: where `cache: disk` writes the decoded frames.
        what: the split, as messages name it.

    Returns:
        `(dataset of (uint8 [size, size, 3], int32 label), frame count, skipped paths)`.

    Raises:
        UserError: a file cannot be decoded and `on_bad_file` is `error`, or none can.
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


def cached_splits(items: dict[str, list], cfg, cache_dir: Path) -> tuple[dict, dict]:
    """`cached_frames` for each split; prints how many unreadable files were skipped.

    Args:
        items: `{split name: [(path, label), ...]}`; an empty list gives no dataset.
        cfg: the data config.
        cache_dir: the run's cache folder (one cache file per split).

    Returns:
        `(datasets, counts)`: `{split: unbatched dataset or None}` and `{split: frames, "skipped": n}`.
    """
    datasets, counts, skipped = {}, {}, []
    for split, pairs in items.items():
        if not pairs:
            datasets[split] = None
            continue
        paths, labels = zip(*pairs)
        datasets[split], counts[split], bad = cached_frames(list(paths), list(labels), cfg, Path(cache_dir) / split,
                                                            f"data ({split} split)")
        skipped += bad
    counts["skipped"] = len(skipped)
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}", flush=True)
    return datasets, counts


def batched(ds, batch_size: int, shuffle_buffer: int | None = None, seed: int | None = None):
    """Batches `(x, y)` with x cast to float32; with `shuffle_buffer`, a new order every epoch.

    Args:
        ds: examples `(x, y)`, or None (a split that is not there: None is returned).
        batch_size: examples per batch (the last batch may be smaller).
        shuffle_buffer: None: keep the order; else the shuffle buffer's size.
        seed: the run's seed; each epoch shuffles with a seed drawn from it (`epoch_seeds`).

    Returns:
        The batched, prefetched dataset (None for None).
    """
    if ds is None:
        return None
    if shuffle_buffer:  # a new order every epoch, the same order for the same epoch after a restart
        frames, count = ds, ds.cardinality()
        ds = epoch_seeds(seed).flat_map(lambda s: frames.shuffle(shuffle_buffer, seed=s))
        ds = ds.apply(tf.data.experimental.assert_cardinality(count)) if count >= 0 else ds
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


# --------------------------------------------------------------------------- tfds


@dataclasses.dataclass
class TfdsImages:
    """A tfds (image, class label) dataset as `load_tfds` prepares it: batches of `(float32 pixels, int32 label)`."""

    train: tf.data.Dataset  # shuffled every epoch
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    train_steps: int
    class_names: list[str]
    fingerprint: str  # the dataset's full name and the training split
    counts: dict


def load_tfds(cfg) -> TfdsImages:
    """Reads `cfg.data.tfds_name` (an image classification dataset), resized to `image_size`, batched.

    Args:
        cfg: the run config (`cfg.data.tfds_*`, `image_size`, `validation_split`, `batch_size`, `cache`).

    Returns:
        The `TfdsImages`.

    Raises:
        UserError: the dataset cannot be loaded, or is not (image, class label).
    """
    d = cfg.data
    n_val = int(round(100 * d.validation_split))
    train_split = f"{d.tfds_train_split}[{n_val}%:]" if n_val else d.tfds_train_split
    splits = [train_split] + ([f"{d.tfds_train_split}[:{n_val}%]"] if n_val else []) + (
        [d.tfds_test_split] if d.tfds_test_split else []
    )
    with tfds_errors(d):
        builder = open_builder(d)
        info = builder.info
        image_key, label_key = info.supervised_keys if info.supervised_keys else ("image", "label")
        label = info.features[label_key] if label_key in info.features else None
        if label is None or not hasattr(label, "names") or image_key not in info.features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: expected an (image, class label) dataset, "
                            f"found features {list(info.features)}")
        datasets = [builder.as_dataset(split=s, shuffle_files=False).map(lambda e: (e[image_key], e[label_key]))
                    for s in splits]

    def prepare(ds):
        ds = ds.map(
            lambda x, y: (resize_uint8(x, d.image_size), tf.cast(y, tf.int32)),
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
    return TfdsImages(
        train=batched(train, d.batch_size, min(d.shuffle_buffer, n_train), cfg.seed),
        validation=batched(val, d.batch_size),
        test=batched(test, d.batch_size),
        train_steps=-(-n_train // d.batch_size),
        class_names=list(label.names),
        fingerprint=hashlib.sha256(f"{info.full_name}:{train_split}".encode()).hexdigest()[:16],
        counts={"train": n_train, "skipped": 0},
    )


# --------------------------------------------------------------------------- serving


def not_empty(x):
    """Makes a batch of no inputs one input of zeros (some kernels fail on empty batches).

    Returns:
        `(padded, n)` for a batch `x` `[n, ...]`: run the model on `padded`, then slice its outputs `[:n]`.
    """
    shape = tf.shape(x)
    one = tf.concat([[1], tf.maximum(shape[1:], 1)], axis=0)
    padded = tf.cond(shape[0] > 0, lambda: x, lambda: tf.zeros(one, x.dtype))
    padded.set_shape(tf.TensorShape([None]).concatenate(x.shape[1:]))
    return padded, shape[0]


def decode_images(images, size: int):
    """Encoded images (a string tensor `[n]` of JPEG, PNG, GIF or BMP bytes, any size) -> float32 RGB
    `[n, size, size, 3]` in [0, 255], resized with antialiasing (not rounded)."""

    def decode_one(blob):
        image = tf.io.decode_image(blob, channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size), antialias=True)

    return tf.map_fn(decode_one, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
