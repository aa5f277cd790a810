"""Recommender: neural collaborative filtering on implicit feedback (He et al., WWW 2017), and where each part lives.

- `readers.py`: interaction logs as they come (MovieLens files, any CSV or
  Parquet with a column mapping, titles, tfds `movielens/*`);
- `sample.py`: the generated viewing log the default and smoke configs train on;
- `split.py`: the NCF paper's leave-one-out split (each user's latest
  interaction is the test item, the one before it the validation item, each
  ranked against 99 items the user never interacted with, fixed by a seed);
- `data.py`: the log named by `cfg.data`, split, as `tf.data` batches; training
  negatives drawn again every epoch, exactly from the items the user has not
  interacted with in training;
- `model.py`: the `models/ncf.py` builder of `model.name` and the loss (binary
  cross-entropy, optionally weighted per interaction); `pretrain.py`: NeuMF
  from trained GMF and MLP runs;
- `metrics.py`: the ranking metrics HR@K and NDCG@K over `[users, candidates]`;
- `serving.py`: the export's signatures on raw string IDs: `recommend`,
  `score`, `similar_items`;
- `report.py`: the TopPop baseline on the same split, HR@K curves;
- `predict.py`: `reelml predict EXPORT --user U`, `--users-file F`, `--similar-to ITEM`.

Batches, in training and evaluation alike, are `({"user": [B], "item": [B, C]},
relevance [B, C])`: C candidates per user, relevance 0 for negatives and the
interaction's weight (1 unless weighted) for the positive.
"""

from __future__ import annotations

from training.tasks import base
from training.tasks.recommender import data, metrics, model, predict, report, serving


class RecommenderTask(base.Task):
    """The recommender's hooks (see `base.Task`); each one lives in the file named beside it."""

    name = "recommender"

    load_data = staticmethod(data.load_data)  # data.py
    build_model = staticmethod(model.build_model)  # model.py (and pretrain.py)
    make_loss = staticmethod(model.make_loss)  # model.py
    make_metrics = staticmethod(metrics.make_metrics)  # metrics.py
    make_eval_metrics = staticmethod(metrics.make_eval_metrics)  # metrics.py
    verification_inputs = staticmethod(serving.verification_inputs)  # serving.py
    predict_arguments = staticmethod(predict.predict_arguments)  # predict.py
    predict_hint = staticmethod(predict.predict_hint)  # predict.py
    predict = staticmethod(predict.predict)  # predict.py (last: from here on `predict` in this body is the hook)
    # data_tags, epoch_callbacks, calibrate, csv_fields: base.Task's defaults (no calibration: nothing is fitted after training).

    def report(self, cfg, model, data, calibration):  # report.py
        return report.report(cfg, model, data)

    def export_metadata(self, cfg, data, calibration):  # serving.py
        return serving.export_metadata(cfg, data)

    def serving_endpoints(self, cfg, model, data, calibration):  # serving.py
        return serving.serving_endpoints(cfg, model, data)


TASK = RecommenderTask()
