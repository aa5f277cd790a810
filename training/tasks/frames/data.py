"""Frames data: class-per-folder image files, a tfds dataset or the generated sample frames -> batched `tf.data`.

Each split is decoded, resized and cached once (`training/tasks/images.py`); batches
are `(float32 pixels [batch, size, size, 3] in [0, 255], int32 label [batch])`, the
training batches reshuffled every epoch. With `data.mixup` or `data.cutmix`, the
training batches are mixed (`mixing.py`) and their labels are class shares
`[batch, classes]`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training.errors import UserError
from training.tasks import images
from training.tasks.base import TaskData
from training.tasks.frames.mixing import mixed_batches


@dataclasses.dataclass
class Data(TaskData):
    """The frames datasets, batched, and what the run records about them.

    Attributes:
        class_names: the labels, in the order of the model's outputs.
    """

    class_names: list[str]


def load_data(cfg, run_dir) -> Data:
    """Builds the train, validation and test datasets described by `cfg.data`.

    Args:
        cfg: the run config (`cfg.data.source`: `folders`, `sample` or `tfds`).
        run_dir: the run folder; `cache: disk` writes under `run_dir/cache/`.

    Returns:
        The `Data`; `counts` holds frames per split and the skipped files.

    Raises:
        UserError: a missing or malformed folder, test classes unknown to training, unreadable frames.
    """
    d = cfg.data
    if d.source == "tfds":
        t = images.load_tfds(cfg)
        return Data(train=mixed_batches(t.train, len(t.class_names), d.mixup, d.cutmix, cfg.seed),
                    validation=t.validation, test=t.test, train_steps=t.train_steps,
                    fingerprint=t.fingerprint, counts=t.counts, class_names=t.class_names)
    train_dir, test_dir = images.frame_folders(d)
    by_class = images.list_class_folders(train_dir, "data.train_dir")
    class_names = list(by_class)
    train_items, val_items = images.stratified_split(by_class, d.validation_split, cfg.seed)
    test_items = []
    if test_dir is not None:
        test_by_class = images.list_class_folders(test_dir, "data.test_dir")
        unknown = sorted(set(test_by_class) - set(class_names))
        if unknown:
            empty = [c for c in unknown if (train_dir / c).is_dir()]
            raise UserError(
                f"data.test_dir `{test_dir}`: class folder(s) {unknown} do not exist in data.train_dir `{train_dir}` "
                f"(training classes: {class_names})" + (f"; {empty} hold no images there" if empty else "")
            )
        test_items = [(p, class_names.index(c)) for c, files in test_by_class.items() for p in files]

    splits, counts = images.cached_splits({"train": train_items, "validation": val_items, "test": test_items},
                                          d, Path(run_dir) / "cache")
    all_files = [p for files in by_class.values() for p in files]
    return Data(
        train=mixed_batches(images.batched(splits["train"], d.batch_size, min(d.shuffle_buffer, counts["train"]), cfg.seed),
                            len(class_names), d.mixup, d.cutmix, cfg.seed),
        validation=images.batched(splits["validation"], d.batch_size),
        test=images.batched(splits["test"], d.batch_size),
        train_steps=-(-counts["train"] // d.batch_size),
        fingerprint=images.fingerprint_files(all_files, train_dir),
        counts=counts,
        class_names=class_names,
    )


def data_tags(data: Data) -> dict[str, str]:
    """Run tags describing the data: frames per split, skipped files (`data.train_frames` ...)."""
    return {f"data.{k}_frames": str(v) for k, v in data.counts.items()}
