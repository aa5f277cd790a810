"""Frames: classify video frames. The task's hooks (`training/tasks/base.py`), and the file each lives in.

- `data.py`: class-per-folder images, tfds or generated sample frames -> cached, shuffled,
  batched `tf.data` of `(float32 pixels in [0, 255], int32 label)`;
- `model.py`: the classifier (our CNN, or a Keras application whose weights are checked before
  training), per-example cross-entropy, accuracy; a backbone's freeze-then-fine-tune schedule;
- `serving.py`: the signatures (encoded JPEG/PNG bytes or decoded pixels in, labels out), `reelml.json`;
- `report.py`: per-class accuracy and the confusion matrix;
- `predict.py`: `reelml predict` over image files, folders and videos;
- `sample.py`: the generated sample frames (`data.source: sample`).

What frames share with the autoencoder (decode, resize, cache, split, video) is in
`training/tasks/images.py` and `training/tasks/video.py`.
"""

from __future__ import annotations

from training.tasks.base import Task
from training.tasks.frames import data, model, serving
from training.tasks.frames import predict as predicting  # `predict`, `report`: hook names too, so the modules go by others
from training.tasks.frames import report as reporting


class FramesTask(Task):
    """Frame classification: images in, one of `class_names` out."""

    name = "frames"

    load_data = staticmethod(data.load_data)
    data_tags = staticmethod(data.data_tags)

    build_model = staticmethod(model.build_model)
    make_loss = staticmethod(model.make_loss)
    make_metrics = staticmethod(model.make_metrics)
    epoch_callbacks = staticmethod(model.epoch_callbacks)  # model.py: a backbone frozen, then fine-tuned

    report = staticmethod(reporting.report)

    export_metadata = staticmethod(serving.export_metadata)
    serving_endpoints = staticmethod(serving.serving_endpoints)
    verification_inputs = staticmethod(serving.verification_inputs)

    predict_arguments = staticmethod(predicting.predict_arguments)
    predict = staticmethod(predicting.predict)
    csv_fields = staticmethod(predicting.csv_fields)
    predict_hint = staticmethod(predicting.predict_hint)


TASK = FramesTask()
