"""What a run shows besides its loss: text sampled from fixed prompts after each epoch, and the end-of-training report.

- `SampleLogger` (the `epoch_callbacks` hook) logs `samples/epoch_NNN.txt` to
  MLflow: the continuations of `samples.prompts`;
- `report`: the validation loss by position in the window (how much the model
  gains from context), as a metric and the figure `loss_by_position.png`; the
  validation loss read both ways, windows from a zero state and streams with
  the state carried.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.dialogue_rnn import state_sizes, stream_model
from training.tasks.dialogue.data import Data, stream_dataset
from training.tasks.dialogue.model import language_model
from training.tasks.dialogue.serving import make_generator


class SampleLogger(keras.callbacks.Callback):
    """Logs text generated from `samples.prompts` to MLflow as `samples/epoch_NNN.txt` after each epoch."""

    def __init__(self, cfg, model, data: Data, tracker):
        super().__init__()
        self.cfg, self.tracker = cfg, tracker
        self.generator = make_generator(cfg, model, data)
        self._generate = tf.function(self.generator.generate)

    def samples(self, seed: int) -> str:
        s = self.cfg.samples
        out = self._generate(tf.constant(s.prompts), tf.constant(s.max_tokens, tf.int32),
                             tf.constant(s.temperature, tf.float32), tf.constant(s.top_k, tf.int32), tf.constant(seed, tf.int64))
        texts = [t.decode("utf-8", errors="replace") for t in out["text"].numpy()]
        sep = " " if self.generator.level == "word" else ""
        return "\n\n".join(f"--- prompt {p!r}\n{p}{sep}{t}" for p, t in zip(s.prompts, texts)) + "\n"

    def on_epoch_end(self, epoch, logs=None):
        s = self.cfg.samples
        if not s.prompts or ((epoch + 1) % s.every_epochs and epoch + 1 != self.cfg.train.epochs):
            return
        header = f"epoch {epoch + 1}, temperature {s.temperature}, top_k {s.top_k}, seed {self.cfg.seed}, " + \
            ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "loss" in k or "perplexity" in k or "bits" in k)
        self.tracker.log_text(header + "\n\n" + self.samples(self.cfg.seed), f"samples/epoch_{epoch + 1:03d}.txt")


def epoch_callbacks(cfg, model, data: Data, tracker) -> list:
    """Callbacks the training loop runs after each epoch: the generated samples (where the run is tracked: the chief).

    Args:
        cfg: a dialogue run config (`samples`).
        model: the model being trained.
        data: the run's `Data` (vocabulary and level).
        tracker: the run's MLflow tracker; samples are logged only where it is enabled.

    Returns:
        `[SampleLogger]`, or `[]` without prompts or tracking.
    """
    return [SampleLogger(cfg, model, data, tracker)] if cfg.samples.prompts and tracker.enabled else []



def report(cfg, model, data: Data):
    """Validation loss by position in the window: how much the model gains from context.

    Args:
        cfg: a dialogue run config (`data.batch_size` batches the validation windows).
        model: the trained model.
        data: the run's `Data` (its `val_windows`).

    Returns:
        `(metrics, figures)`: `{"val_loss_second_half", "val_window_loss", "val_stream_loss"}` and
        `{"loss_by_position.png": figure}`; both empty without validation text.
    """
    if data.val_windows is None:
        return {}, {}
    x, y = data.val_windows
    plain = language_model(model)  # each window from a zero state, stateful or not: the loss by position
    forward = tf.function(lambda t: plain(t, training=False))
    totals = np.zeros(x.shape[1])
    for start in range(0, len(x), cfg.data.batch_size):
        logits = forward(tf.constant(x[start:start + cfg.data.batch_size]))
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(y[start:start + cfg.data.batch_size], tf.cast(logits, tf.float32))
        totals += np.asarray(nats).sum(axis=0)
    by_position = totals / len(x)
    half = len(by_position) // 2
    # `val_window_loss`: every window from a zero state, as a model without `data.stateful` is measured;
    # `val_stream_loss`: the state carried through the validation text, as a stateful run's `val_loss` is.
    # Both for every run, so a stateful and a stateless model compare on either.
    metrics = {"val_loss_second_half": float(by_position[half:].mean()), "val_window_loss": float(by_position.mean()),
               "val_stream_loss": stream_loss(plain, np.r_[x.reshape(-1), y[-1, -1:]], cfg.data.seq_len,
                                              cfg.data.batch_size)}
    return metrics, {"loss_by_position.png": loss_by_position_figure(by_position, data.level)}


def stream_loss(model, ids: np.ndarray, seq_len: int, rows: int) -> float:
    """Mean cross-entropy per token of `ids` read as `rows` parallel streams, the state carried across windows
    (as `data.stateful` validates); the streams shrink to fit a short text."""
    rows = max(1, min(rows, (len(ids) - 1) // 2))
    dataset, _ = stream_dataset(ids, seq_len, rows, None)
    forward = tf.function(stream_model(model))
    states = [tf.zeros([rows, size]) for sizes in state_sizes(model) for size in sizes]
    total, count = 0.0, 0
    for x, y in dataset:
        logits, *states = forward([x["tokens"], *states])
        total += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.cast(logits, tf.float32))))
        count += int(tf.size(y))
    return total / count


def loss_by_position_figure(by_position, level):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(by_position) + 1), by_position)
    ax.set_xlabel(f"position in the window ({level} tokens of context)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"mean {by_position.mean():.3f}, second half {by_position[len(by_position) // 2:].mean():.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

