"""The one training loop: the same code on one device, on several GPUs and on many workers.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` on TF 2.21
(keras#20585), so the step runs through `strategy.run` in this small loop, and
everything else is Keras: layers, optimizer, losses, metrics, the progress bar
and callbacks. Checkpoints hold the model, the optimizer, the epoch counter and
the per-epoch history together, so a run killed at any moment resumes from the
last checkpoint by running the same command again.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import keras
import tensorflow as tf

from training.errors import UserError


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- hardware


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `train.strategy`."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("train.strategy `multi_worker`: the TF_CONFIG environment variable is not set (see scripts/)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    # The default strategy: one device (the first GPU if any), as model.fit uses it, no extra copies.
    return tf.distribute.get_strategy()


def resolve_precision(name: str) -> str:
    if name != "auto":
        return name
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (7, 0):  # tensor cores
            return "mixed_float16"
    return "float32"


def resolve_jit(name: str) -> bool:
    # XLA made training slower on CPU (measured in docs/benchmarks.md); on GPUs it fuses well.
    return name == "on" or (name == "auto" and bool(tf.config.list_physical_devices("GPU")))


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


# --------------------------------------------------------------------------- optimizer


def epoch_steps(data, train_cfg) -> int:
    """Training steps per epoch: all batches, or `train.max_steps_per_epoch` if fewer."""
    cap = train_cfg.max_steps_per_epoch
    return data.train_steps if cap is None else min(data.train_steps, cap)


def make_optimizer(train_cfg, steps_per_epoch: int, precision: str):
    """The Keras optimizer with its learning-rate schedule, from `train.*`."""
    lr = train_cfg.learning_rate
    if train_cfg.lr_schedule == "cosine":
        total = max(1, train_cfg.epochs * steps_per_epoch)
        warmup = min(int(train_cfg.warmup_epochs * steps_per_epoch), total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr,
            decay_steps=total - warmup,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    clip = {"clipnorm": train_cfg.clipnorm} if train_cfg.clipnorm else {}
    if train_cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay, **clip)
    elif train_cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr, **clip)
    else:
        optimizer = keras.optimizers.SGD(lr, momentum=train_cfg.momentum, **clip)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Model, optimizer, epoch and history, saved together; the last good one is restored."""

    def __init__(self, directory, model, optimizer, keep, chief=True):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, history=self.history)
        self._best = tf.train.Checkpoint(model=model)
        directory = Path(directory)
        if not chief:  # workers write (collective ops need every worker to save) where nobody reads
            directory = directory.parent / f".worker-ckpt-{os.getpid()}"
        self._manager = tf.train.CheckpointManager(self._ckpt, str(directory / "last"), max_to_keep=keep)
        self._best_manager = tf.train.CheckpointManager(self._best, str(directory / "best"), max_to_keep=1)

    def restore(self) -> list[dict]:
        """Restores the newest readable checkpoint; returns the history of finished epochs."""
        for path in reversed(self._manager.checkpoints):
            try:
                self._ckpt.read(path).assert_existing_objects_matched()
                print(f"Resuming from {path} (epoch {int(self.epoch.numpy())})", flush=True)
                return json.loads(self.history.numpy().decode())
            except (tf.errors.OpError, AssertionError, ValueError) as e:
                print(f"Checkpoint {path} is unreadable ({type(e).__name__}); trying an older one", flush=True)
        return []

    def save(self, epoch: int, history: list[dict]):
        self.epoch.assign(epoch)
        self.history.assign(json.dumps(history))
        self._manager.save(checkpoint_number=epoch)

    def save_best(self, epoch: int):
        self._best_manager.save(checkpoint_number=epoch)

    def restore_best(self) -> bool:
        path = self._best_manager.latest_checkpoint
        if path:
            self._best.read(path).expect_partial()
        return bool(path)

    @property
    def latest_epoch(self) -> int:
        latest = self._manager.latest_checkpoint
        return int(latest.rsplit("-", 1)[1]) if latest else 0


# --------------------------------------------------------------------------- the loop


class EpochSummaries(keras.callbacks.Callback):
    """Epoch metrics for TensorBoard: `train/` and `validation/` runs, one scalar per metric.

    (Keras' TensorBoard callback reads `model.optimizer`, which only `compile` sets.)
    """

    def __init__(self, log_dir):
        super().__init__()
        self._writers = {split: tf.summary.create_file_writer(str(Path(log_dir) / split)) for split in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writers[split].as_default():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch + 1)
        for writer in self._writers.values():
            writer.flush()


def _progress_verbosity() -> int:
    # A progress bar on a terminal; one line per epoch in cluster logs and files.
    return 1 if sys.stdout.isatty() else 2


class Loop:
    """Compiled train and eval steps for one model under one strategy."""

    def __init__(self, model, optimizer, loss_fn, make_metrics, strategy, jit_compile=False, steps_per_execution=1,
                 make_eval_metrics=None):
        # `make_eval_metrics`: when evaluation measures something training cannot (ranking a held-out item
        # among candidates), its own metrics; else the training ones.
        self.model, self.optimizer, self.loss_fn, self.strategy = model, optimizer, loss_fn, strategy
        self.steps_per_execution = steps_per_execution
        with strategy.scope():
            self.train_metrics = [keras.metrics.Mean(name="loss")] + make_metrics()
            self.eval_metrics = [keras.metrics.Mean(name="loss")] + (make_eval_metrics or make_metrics)()

        def replica_train_step(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                per_example = loss_fn(y, y_pred)
                loss = tf.nn.compute_average_loss(per_example)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            self.train_metrics[0].update_state(per_example)
            for metric in self.train_metrics[1:]:
                metric.update_state(y, y_pred)

        def replica_eval_step(x, y):
            y_pred = model(x, training=False)
            self.eval_metrics[0].update_state(loss_fn(y, y_pred))
            for metric in self.eval_metrics[1:]:
                metric.update_state(y, y_pred)

        if jit_compile:  # XLA compiles the per-replica step; otherwise it is traced inline (one call less per step)
            replica_train_step = tf.function(replica_train_step, jit_compile=True)
            replica_eval_step = tf.function(replica_eval_step, jit_compile=True)

        # Metric results are computed inside the compiled call, as model.fit does: no extra
        # eager ops per step. One step per call unless train.steps_per_execution asks for more.
        @tf.function
        def train_step(iterator):
            strategy.run(replica_train_step, args=next(iterator))
            return {m.name: m.result() for m in self.train_metrics}

        @tf.function
        def train_steps(iterator, n):
            for _ in tf.range(n):
                strategy.run(replica_train_step, args=next(iterator))
            return {m.name: m.result() for m in self.train_metrics}

        @tf.function
        def eval_step(batch):
            strategy.run(replica_eval_step, args=batch)

        self._train_step, self._train_steps, self._eval_step = train_step, train_steps, eval_step

    def train_epoch(self, dataset, steps, callbacks, nan_guard=True) -> dict:
        for metric in self.train_metrics:
            metric.reset_state()
        iterator = iter(dataset)
        done = 0
        logs = {}
        while done < steps:
            n = min(self.steps_per_execution, steps - done)
            logs = self._train_step(iterator) if n == 1 else self._train_steps(iterator, tf.constant(n))
            done += n
            if nan_guard and not math.isfinite(float(logs["loss"])):
                raise TrainingDiverged(f"the training loss became {float(logs['loss'])} at step {done}")
            callbacks.on_train_batch_end(done - 1, logs)
        return {k: float(v) for k, v in logs.items()}

    def evaluate(self, dataset, prefix="") -> dict:
        for metric in self.eval_metrics:
            metric.reset_state()
        for batch in dataset:
            self._eval_step(batch)
        return {f"{prefix}{m.name}": float(m.result()) for m in self.eval_metrics}


def _monitored(loop: Loop, train_cfg, has_validation: bool) -> tuple[str, int]:
    """The metric that picks the best epoch, and +1 (lower is better) or -1 (higher is better)."""
    if not has_validation:  # nothing held out: the training loss is all there is
        return "loss", 1
    names = [f"val_{m.name}" for m in loop.eval_metrics]
    if train_cfg.monitor not in names:
        raise UserError(f"train.monitor `{train_cfg.monitor}`: not a validation metric of this run (expected one of {', '.join(names)})")
    return train_cfg.monitor, 1 if train_cfg.monitor_mode == "min" else -1


def fit(loop: Loop, data, train_cfg, checkpoints: Checkpoints, callbacks=(), on_epoch_end=None) -> list[dict]:
    """Trains for `train_cfg.epochs` epochs, resuming from the last checkpoint.

    Args:
        loop: the compiled steps.
        data: the task's `Data` (train, validation, train_steps).
        train_cfg: the `train` config section.
        checkpoints: where epochs are saved and resumed from.
        callbacks: Keras callbacks (TensorBoard, ...); a progress bar is added.
        on_epoch_end: called as `on_epoch_end(epoch, logs)` after each finished,
            checkpointed epoch (1-based), e.g. to log to MLflow.

    Returns:
        The history: one dict of metrics per finished epoch, resumed epochs included.
    """
    strategy, model = loop.strategy, loop.model
    history = checkpoints.restore()
    steps = epoch_steps(data, train_cfg)
    train_ds = strategy.experimental_distribute_dataset(data.train)
    val_ds = strategy.experimental_distribute_dataset(data.validation) if data.validation is not None else None
    monitor, sign = _monitored(loop, train_cfg, val_ds is not None)
    best = min((sign * h[monitor] for h in history), default=math.inf)
    since_best = len(history) - 1 - min(range(len(history)), key=lambda i: sign * history[i][monitor]) if history else 0

    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_progbar=True, model=model, verbose=_progress_verbosity(), epochs=train_cfg.epochs, steps=steps
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(len(history), train_cfg.epochs):
        if train_cfg.early_stopping_patience and since_best >= train_cfg.early_stopping_patience:
            print(f"Early stopping: no better {monitor} for {since_best} epochs", flush=True)
            break
        callback_list.on_epoch_begin(epoch)
        logs = loop.train_epoch(train_ds, steps, callback_list, nan_guard=train_cfg.nan_guard)
        if val_ds is not None:
            logs.update(loop.evaluate(val_ds, prefix="val_"))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(loop.optimizer.learning_rate))
        history.append(logs)
        if sign * logs[monitor] < best:
            best, since_best = sign * logs[monitor], 0
            checkpoints.save_best(epoch + 1)
        else:
            since_best += 1
        if (epoch + 1) % train_cfg.checkpoint_every_epochs == 0 or epoch + 1 == train_cfg.epochs:
            checkpoints.save(epoch + 1, history)
        callback_list.on_epoch_end(epoch, logs)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, logs)
    if history and checkpoints.latest_epoch != len(history):
        checkpoints.save(len(history), history)  # stopped early between checkpoints: keep what was trained
    callback_list.on_train_end()
    return history
