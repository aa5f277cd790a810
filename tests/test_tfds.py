"""tfds names, read through tfds's own offline paths: a prepared data_dir and mock data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from training.config import load_config
from training.errors import UserError
from training.tasks.frames.data import load_data
from training.train import train

from conftest import CONFIGS


def _prepared_data_dir(root, per_split=12):
    rng = np.random.default_rng(0)

    def split(n):
        images = rng.integers(0, 255, (n, 24, 24, 3)).astype(np.uint8)
        labels = np.arange(n) % 3
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(24, 24, 3)),
        "label": tfds.features.ClassLabel(names=["wide", "medium", "close"]),
    })
    tfds.dataset_builders.store_as_tfds_dataset(
        name="studio_shots", version="1.0.0", features=features, data_dir=str(root),
        split_datasets={"train": split(per_split), "test": split(per_split // 2)},
    )
    return root


def _tfds_overrides(workdir, name, data_dir=None):
    out = ["data.source=tfds", f"data.tfds_name={name}", "data.tfds_download=false", "data.validation_split=0.25",
           f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    return out + ([f"data.tfds_data_dir={data_dir}"] if data_dir else [])


def test_prepared_tfds_data_dir_trains_offline(workdir):
    data_dir = _prepared_data_dir(workdir / "tfds")
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", _tfds_overrides(workdir, "studio_shots", data_dir))
    data = load_data(cfg, workdir / "run")
    assert data.class_names == ["wide", "medium", "close"]
    assert data.counts["train"] == 9  # 12 minus the 25% validation slice
    assert sum(int(tf.shape(y)[0]) for _, y in data.validation) == 3
    assert sum(int(tf.shape(y)[0]) for _, y in data.test) == 6
    result = train(cfg)
    assert (result.export_dir / "saved_model.pb").exists()


def test_mock_data_for_a_catalogue_name(workdir):
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", _tfds_overrides(workdir, "rock_paper_scissors"))
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_data(cfg, workdir / "run")
    assert data.class_names == ["rock", "paper", "scissors"]
    x, y = next(iter(data.train))  # the recipe's CutMix/MixUp: labels are class shares
    assert x.shape[1:] == (32, 32, 3) and x.dtype == tf.float32 and y.shape[1:] == (3,) and y.dtype == tf.float32
    x, y = next(iter(data.validation))
    assert x.shape[1:] == (32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32


def test_unavailable_tfds_dataset_is_a_clear_error(workdir):
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", _tfds_overrides(workdir, "studio_shots", workdir / "empty"))
    with pytest.raises(UserError, match=r"data.tfds_name `studio_shots`: could not be loaded.*tfds_data_dir"):
        load_data(cfg, workdir / "run")
