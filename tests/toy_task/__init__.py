"""A toy task written only against `training/tasks/base.py`: a linear regressor over a CSV of numbers.

It is the proof that the contract is complete: `tests/test_task_contract.py`
registers it in `TASKS` (and its schema in `RUN_CONFIGS`) and trains, exports
and predicts with it through the normal CLI, with no other change to reelml.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field

from training.config.sections import RunConfig, Section
from training.errors import UserError
from training.tasks.base import Task, TaskData


class ToyData(Section):
    """A CSV with a header: numeric feature columns and the target column `y`."""

    path: str = Field(..., description="The CSV file.")
    batch_size: int = Field(16, ge=1, description="Rows per batch.")


class ToyModel(Section):
    """One Dense unit."""

    name: Literal["linear"] = Field("linear", description="The only architecture.")


class ToyRun(RunConfig):
    """A toy regression run (`task: toy`)."""

    task: Literal["toy"] = Field("toy", description="Fit y from the other columns.")
    data: ToyData = Field(..., description="Input data.")
    model: ToyModel = Field(default_factory=ToyModel, description="Architecture.")


@dataclasses.dataclass
class Data(TaskData):
    columns: list[str]


def read_rows(path) -> tuple[list[str], np.ndarray]:
    try:
        header = Path(path).read_text().splitlines()[0].split(",")
        return header, np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    except (OSError, ValueError, IndexError) as e:
        raise UserError(f"`{path}`: not a CSV of numbers with a header ({e})") from None


class ToyTask(Task):
    name = "toy"

    def load_data(self, cfg, run_dir):
        header, rows = read_rows(cfg.data.path)
        target = header.index("y")
        x, y = np.delete(rows, target, axis=1), rows[:, target:target + 1]
        cut = int(len(rows) * 0.8)

        def batches(a, b, shuffle=False):
            ds = tf.data.Dataset.from_tensor_slices((a, b))
            return (ds.shuffle(len(a), seed=cfg.seed) if shuffle else ds).batch(cfg.data.batch_size)

        steps = -(-cut // cfg.data.batch_size)
        return Data(train=batches(x[:cut], y[:cut], shuffle=True).repeat(), validation=batches(x[cut:], y[cut:]),
                    test=None, train_steps=steps, fingerprint=hashlib.sha256(rows.tobytes()).hexdigest()[:16],
                    counts={"train": cut, "validation": len(rows) - cut},
                    columns=[c for c in header if c != "y"])

    def build_model(self, cfg, data):
        inputs = keras.Input((len(data.columns),), name="features")
        return keras.Model(inputs, keras.layers.Dense(1, name="linear")(inputs))

    def make_loss(self, cfg, data):
        return lambda y_true, y_pred: tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)

    def make_metrics(self, cfg, data):
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def report(self, cfg, model, data, calibration):
        return {}, {}

    def export_metadata(self, cfg, data, calibration):
        return {"columns": data.columns}

    def serving_endpoints(self, cfg, model, data, calibration):
        def regress(features):
            return {"prediction": model(features, training=False)[:, 0]}

        return model, {"serving_default": (regress, [tf.TensorSpec([None, len(data.columns)], tf.float32, name="features")])}

    def verification_inputs(self, cfg, data):
        return {"serving_default": {"features": np.eye(len(data.columns), dtype=np.float32)}}

    def predict_arguments(self, parser):
        parser.add_argument("inputs", nargs="+", help="CSV files with the training file's feature columns")

    def predict(self, loaded, metadata, report, *, inputs):
        for path in inputs:
            header, rows = read_rows(path)
            keep = [header.index(c) for c in metadata["columns"]]
            out = loaded.signatures["serving_default"](features=tf.constant(rows[:, keep]))
            for i, value in enumerate(out["prediction"].numpy()):
                yield {"source": path, "row": i + 1, "prediction": float(value)}

    def predict_hint(self, cfg):
        return "ROWS.csv"


TASK = ToyTask()
