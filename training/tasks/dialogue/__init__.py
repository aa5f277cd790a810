"""Dialogue: a character- or word-level language model of scripts. `TASK` is what `training.tasks.TASKS` maps to.

Where each part lives:

- `text.py`: reading scripts: plain text files and folders (play scripts with
  `NAME:` cues as they are), indented screenplays (rewritten as `NAME: line`),
  Cornell Movie-Dialogs `movie_lines.txt`, tfds text datasets such as
  `tiny_shakespeare`, or the bundled Tiny Shakespeare -> one text -> a
  contiguous split: the last `validation_split` of it, from a line break on,
  is validation and never trained on;
- `tokens.py`: characters or words, cut by TensorFlow ops that the export runs
  too; the vocabulary comes from the training text only, index 0 is the
  unknown token;
- `data.py`: training windows of `seq_len` tokens and their next tokens, cut at
  a new random offset and shuffled every epoch (seeded); `Data`, `load_data`;
- `model.py`: the builder call; `metrics.py`: the loss (cross-entropy in nats
  per token), the validation perplexity and bits per character;
- `serving.py`: the signatures, strings in and strings out: `generate(prompt,
  max_tokens, temperature, top_k, seed)` with the sampling loop inside the
  graph, and `next_token(text, k)`; the export's metadata;
- `report.py`: text samples from fixed prompts logged to MLflow after each
  epoch; the validation loss by position in the window;
- `predict.py`: `reelml predict EXPORT --prompt ... [--next]`, its flags and checks.

Batches are `(tokens int32 [B, T], next tokens int32 [B, T])`.
"""

from __future__ import annotations

from training.tasks.base import Task
from training.tasks.dialogue import data, metrics, model, predict, report, serving


class DialogueTask(Task):
    """The dialogue hooks of `training.tasks.base.Task`; each one lives in the file named beside it."""

    name = "dialogue"

    load_data = staticmethod(data.load_data)  # data.py
    build_model = staticmethod(model.build_model)  # model.py
    make_loss = staticmethod(metrics.make_loss)  # metrics.py
    make_metrics = staticmethod(metrics.make_metrics)  # metrics.py
    make_eval_metrics = staticmethod(metrics.make_eval_metrics)  # metrics.py
    epoch_callbacks = staticmethod(report.epoch_callbacks)  # report.py: samples logged after each epoch
    verification_inputs = staticmethod(serving.verification_inputs)  # serving.py
    predict_arguments = staticmethod(predict.predict_arguments)  # predict.py
    predict_hint = staticmethod(predict.predict_hint)  # predict.py
    predict = staticmethod(predict.predict)  # predict.py (last: from here on `predict` in this body is the hook)
    # data_tags, calibrate, csv_fields: base.Task's defaults (no calibration: nothing is fitted after training).

    def report(self, cfg, model, data, calibration):  # report.py
        return report.report(cfg, model, data)

    def export_metadata(self, cfg, data, calibration):  # serving.py
        return serving.export_metadata(cfg, data)

    def serving_endpoints(self, cfg, model, data, calibration):  # serving.py
        return serving.serving_endpoints(cfg, model, data)


TASK = DialogueTask()
