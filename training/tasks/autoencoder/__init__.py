"""Autoencoder: embeddings, reconstructions and calibrated anomaly scores. The task's hooks, and the file each lives in.

- `data.py`: frames (through `training/tasks/images.py`; class folders optional, labels
  ignored) or feature rows -> `tf.data` of `(x, x)`, frames scaled to [0, 1] and
  augmented, rows standardised; `tables.py` reads CSV, Parquet and .npy tables;
- `model.py`: the conv or dense autoencoder, per-input mean squared error, MAE;
- `score.py`: the error statistics, the anomaly score and `calibrate`: after training,
  the score's statistics on the training inputs and the threshold, a percentile of
  the validation scores; the result is passed to the report and the export;
- `serving.py`: `is_anomaly` (also `serving_default`), `anomaly_score`, `encode`,
  `reconstruct` and, for frames, `analyse_pixels`; `reelml.json`;
- `report.py`: originals beside reconstructions, the validation score histogram;
- `predict.py`: `reelml predict EXPORT INPUT... [--embed FILE] [--anomalies]`;
- `sample.py`: the generated sample feature rows (`data.source: sample_table`).
"""

from __future__ import annotations

from training.tasks.autoencoder import data, model, score, serving
from training.tasks.autoencoder import predict as predicting  # `predict`, `report`: hook names too, so the modules go by others
from training.tasks.autoencoder import report as reporting
from training.tasks.base import Task


class AutoencoderTask(Task):
    """Autoencoders over frames or feature rows: embeddings, reconstructions, anomaly scores."""

    name = "autoencoder"

    load_data = staticmethod(data.load_data)
    data_tags = staticmethod(data.data_tags)

    build_model = staticmethod(model.build_model)
    make_loss = staticmethod(model.make_loss)
    make_metrics = staticmethod(model.make_metrics)

    calibrate = staticmethod(score.calibrate)
    report = staticmethod(reporting.report)

    export_metadata = staticmethod(serving.export_metadata)
    serving_endpoints = staticmethod(serving.serving_endpoints)
    verification_inputs = staticmethod(serving.verification_inputs)

    predict_arguments = staticmethod(predicting.predict_arguments)
    predict = staticmethod(predicting.predict)
    csv_fields = staticmethod(predicting.csv_fields)
    predict_hint = staticmethod(predicting.predict_hint)


TASK = AutoencoderTask()
