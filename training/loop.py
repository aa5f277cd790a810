"""The one training loop: the same code on one device, on several GPUs and on many workers.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` on TF 2.21
(keras#20585), so the step runs through `strategy.run` in this small loop, and
everything else is Keras: layers, optimizer, losses, metrics, the progress bar
and callbacks. Checkpoints hold the model, the optimizer, the RNG and metric
state, the epoch and step counters and the per-epoch history together, so a run
killed at any moment resumes from the last checkpoint by running the same
command again, and ends with the weights an uninterrupted run would have. SIGTERM
(a scheduler preempting the job) makes every worker checkpoint the same step and
stop (`Preempted`). The strategy, precision and XLA choices are in
`training/hardware.py`, the checkpoints in `training/checkpoints.py`.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from training.epochs import set_epoch
from training.errors import Preempted, UserError


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- optimizer


def epoch_steps(data, train_cfg) -> int:
    """Training steps per epoch: all batches, or `train.max_steps_per_epoch` if fewer."""
    cap = train_cfg.max_steps_per_epoch
    return data.train_steps if cap is None else min(data.train_steps, cap)


class BudgetedCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine decay to zero at `planned_steps`: a variable, which a time budget
    (`train.max_minutes`) sets once it has measured how long an epoch takes.

    Args:
        peak: the learning rate after warm-up.
        warmup_steps: linear warm-up from zero (0: none).
        planned_steps: where the decay reaches zero, until `plan` moves it.
    """

    def __init__(self, peak: float, warmup_steps: int, planned_steps: int):
        self.peak, self.warmup = float(peak), int(warmup_steps)
        self.planned = tf.Variable(float(planned_steps), trainable=False, dtype=tf.float32, name="planned_steps")

    def plan(self, steps: int) -> None:
        self.planned.assign(float(max(steps, self.warmup + 1)))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / tf.maximum(self.planned - self.warmup, 1.0), 0.0, 1.0)
        decayed = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup, "planned_steps": int(self.planned.numpy())}


def make_schedule(train_cfg, steps_per_epoch: int):
    """`train.lr_schedule` as a Keras schedule (or the constant rate); with `train.max_minutes`, a `BudgetedCosine`."""
    lr = train_cfg.learning_rate
    if train_cfg.lr_schedule != "cosine":
        return lr
    total = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = min(int(train_cfg.warmup_epochs * steps_per_epoch), total - 1)
    if train_cfg.max_minutes is not None:
        return BudgetedCosine(lr, warmup, total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else lr,
        decay_steps=total - warmup,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(train_cfg, steps_per_epoch: int, precision: str, schedule=None):
    """The Keras optimizer with its learning-rate schedule (`schedule`, else `make_schedule`), from `train.*`."""
    lr = make_schedule(train_cfg, steps_per_epoch) if schedule is None else schedule
    extra = {"clipnorm": train_cfg.clipnorm} if train_cfg.clipnorm else {}
    if train_cfg.ema_momentum is not None:
        extra.update(use_ema=True, ema_momentum=train_cfg.ema_momentum)
    if train_cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay, **extra)
    elif train_cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr, **extra)
    else:
        optimizer = keras.optimizers.SGD(lr, momentum=train_cfg.momentum, **extra)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


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
                 make_eval_metrics=None, schedule=None):
        # `make_eval_metrics`: when evaluation measures something training cannot (ranking a held-out item
        # among candidates), its own metrics; else the training ones. `schedule`: the optimizer's learning-rate
        # schedule, which a time budget re-plans (`BudgetedCosine`).
        self.model, self.optimizer, self.loss_fn, self.strategy = model, optimizer, loss_fn, strategy
        self.schedule = schedule
        self.steps_per_execution = steps_per_execution
        with strategy.scope():
            self.train_metrics = [keras.metrics.Mean(name="loss")] + make_metrics()
            self.eval_metrics = [keras.metrics.Mean(name="loss")] + (make_eval_metrics or make_metrics)()

        def replica_gradients(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                per_example = loss_fn(y, y_pred)
                loss = tf.nn.compute_average_loss(per_example)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)
            return tape.gradient(scaled, model.trainable_variables), per_example, y_pred

        if jit_compile:
            # XLA compiles the forward and backward pass. The update, with its all-reduce across replicas, stays
            # outside: XLA has no CPU collectives, and this way one XLA program serves one device and many.
            replica_gradients = tf.function(replica_gradients, jit_compile=True)

        def replica_train_step(x, y):
            grads, per_example, y_pred = replica_gradients(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            self.train_metrics[0].update_state(per_example)
            for metric in self.train_metrics[1:]:
                metric.update_state(y, y_pred)

        def replica_eval_step(x, y):
            y_pred = model(x, training=False)
            self.eval_metrics[0].update_state(loss_fn(y, y_pred))
            for metric in self.eval_metrics[1:]:
                metric.update_state(y, y_pred)

        if jit_compile:  # otherwise traced inline (one call less per step)
            replica_eval_step = tf.function(replica_eval_step, jit_compile=True)

        # Metric results are computed inside the compiled call, as model.fit does: no extra
        # eager ops per step. One step per call unless train.steps_per_execution asks for more.
        # `stop` is this process's "SIGTERM arrived" flag; summed over all workers inside the same call, so
        # every worker learns of a preemption after the same step and they checkpoint together.
        def results(stop):
            logs = {m.name: m.result() for m in self.train_metrics}
            logs["stop"] = strategy.reduce("SUM", strategy.run(tf.identity, args=(stop,)), axis=None)
            return logs

        @tf.function
        def train_step(iterator, stop):
            strategy.run(replica_train_step, args=next(iterator))
            return results(stop)

        @tf.function
        def train_steps(iterator, n, stop):
            for _ in tf.range(n):
                strategy.run(replica_train_step, args=next(iterator))
            return results(stop)

        @tf.function
        def eval_step(batch):
            strategy.run(replica_eval_step, args=batch)

        self._train_step, self._train_steps, self._eval_step = train_step, train_steps, eval_step

    def train_epoch(self, dataset, steps, callbacks, nan_guard=True, start_step=0, stop_requested=lambda: False) -> dict:
        """Runs steps `start_step + 1 .. steps` of an epoch (a resumed epoch keeps its restored metric state).

        Returns the epoch's logs; `logs["stopped_at"]` is set when every worker agreed to stop (preemption).
        """
        if start_step == 0:
            for metric in self.train_metrics:
                metric.reset_state()
        iterator = iter(dataset)
        done = start_step
        logs = {}
        while done < steps:
            n = min(self.steps_per_execution, steps - done)
            stop = tf.constant(1.0 if stop_requested() else 0.0)
            logs = self._train_step(iterator, stop) if n == 1 else self._train_steps(iterator, tf.constant(n), stop)
            done += n
            if nan_guard and not math.isfinite(float(logs["loss"])):
                raise TrainingDiverged(f"the training loss became {float(logs['loss'])} at step {done}")
            callbacks.on_train_batch_end(done - 1, {k: v for k, v in logs.items() if k != "stop"})
            if float(logs["stop"]) > 0 and done < steps:
                return {"stopped_at": done}
        return {k: float(v) for k, v in logs.items() if k != "stop"}

    @property
    def _averages(self):
        """The optimizer's moving averages of the trainable weights (`train.ema_momentum`), or None."""
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # under loss scaling
        return getattr(optimizer, "_model_variables_moving_average", None) if optimizer.use_ema else None

    def swap_averaged_weights(self) -> None:
        """Exchanges the trainable weights with their moving averages (`train.ema_momentum`); twice undoes it.

        Validation swaps them in and back, so it measures the averaged weights while training goes on
        from its own (and a checkpoint holds both, each in its place).
        """
        for variable, average in zip(self.model.trainable_variables, self._averages or ()):
            if average is not None:
                held = keras.ops.copy(variable.value)
                variable.assign(average.value)
                average.assign(held)

    def adopt_averaged_weights(self) -> None:
        """Sets the trainable weights to their moving averages for good: what is tested, reported and exported."""
        if self._averages is not None:
            getattr(self.optimizer, "inner_optimizer", self.optimizer).finalize_variable_values(self.model.trainable_variables)

    def evaluate(self, dataset, prefix="") -> dict:
        for metric in self.eval_metrics:
            metric.reset_state()
        for batch in dataset:
            self._eval_step(batch)
        return {f"{prefix}{m.name}": float(m.result()) for m in self.eval_metrics}


# The clock a time budget reads (a test replaces it with one that advances a fixed time per epoch).
clock = time.monotonic


class TimeBudget:
    """`train.max_minutes`: training time that ends the run, and that the cosine schedule spans.

    After every epoch, the epochs that fit in what is left of the budget are planned, at most `train.epochs`,
    and the schedule is moved to end with them; no epoch starts once they are done. An epoch's expected
    time is the first epoch's (which includes tracing) until there are others, then the mean of the others,
    so one slow epoch on a busy machine neither ends the run early nor runs it past the budget. The time spent and the plan are logged with every
    epoch (`train_seconds`, `planned_epochs`) and so restored with the checkpoint: a resumed run keeps the
    time it already spent (an epoch interrupted part-way is not counted). On many workers the epoch's time
    is their mean, so every worker plans and stops alike.
    """

    def __init__(self, train_cfg, steps_per_epoch: int, schedule, strategy, history: list[dict]):
        self.seconds, self.epochs, self.steps = train_cfg.max_minutes * 60.0, train_cfg.epochs, steps_per_epoch
        self.schedule = schedule if isinstance(schedule, BudgetedCosine) else None
        last = history[-1] if history else {}
        self.spent = float(last.get("train_seconds", 0.0))
        spent = [float(h["train_seconds"]) for h in history if "train_seconds" in h]
        self.times = [b - a for a, b in zip([0.0] + spent, spent)]  # each epoch's seconds, restored ones first
        self.planned = int(last.get("planned_epochs", self.epochs))
        if self.schedule is not None:
            self.schedule.plan(self.planned * steps_per_epoch)
        self._mean = tf.function(lambda v: strategy.reduce("MEAN", strategy.run(tf.identity, args=(v,)), axis=None))

    def after_epoch(self, epoch: int, seconds: float) -> dict:
        """Counts an epoch (1-based) of `seconds` and re-plans. Returns what to log."""
        seconds = float(self._mean(tf.constant(seconds, tf.float32)))
        self.spent += seconds
        self.times.append(seconds)
        steady = self.times[1:] or self.times
        fit = int((self.seconds - self.spent) // max(sum(steady) / len(steady), 1e-6))
        planned = max(epoch, min(self.epochs, epoch + fit))
        if planned != self.planned:
            self.planned = planned
            if self.schedule is not None:
                self.schedule.plan(self.planned * self.steps)
        return {"train_seconds": self.spent, "planned_epochs": float(self.planned)}

    def done(self, epochs_done: int) -> bool:
        return epochs_done >= self.planned or self.spent >= self.seconds


def _monitored(loop: Loop, train_cfg, has_validation: bool) -> tuple[str, int]:
    """The metric that picks the best epoch, and +1 (lower is better) or -1 (higher is better)."""
    if not has_validation:  # nothing held out: the training loss is all there is
        return "loss", 1
    names = [f"val_{m.name}" for m in loop.eval_metrics]
    if train_cfg.monitor not in names:
        raise UserError(f"train.monitor `{train_cfg.monitor}`: not a validation metric of this run (expected one of {', '.join(names)})")
    return train_cfg.monitor, 1 if train_cfg.monitor_mode == "min" else -1


class _Sigterm:
    """Turns SIGTERM (what SLURM and Kubernetes send before killing a job) into a flag the loop polls."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave the default handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.received = True
        print("SIGTERM received: checkpointing after the current step", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def fit(loop: Loop, data, train_cfg, checkpoints, callbacks=(), on_epoch_end=None, resume=True,
        on_restore=None) -> list[dict]:
    """Trains for `train_cfg.epochs` epochs, resuming from the last checkpoint.

    Args:
        loop: the compiled steps.
        data: the task's `Data` (train, validation, train_steps).
        train_cfg: the `train` config section.
        checkpoints: the run's `training.checkpoints.Checkpoints`: where epochs are saved and resumed from.
        callbacks: Keras callbacks (TensorBoard, ...); a progress bar is added.
        on_epoch_end: called as `on_epoch_end(epoch, logs)` after each finished,
            checkpointed epoch (1-based), e.g. to log to MLflow.
        resume: continue from the newest checkpoint (False: a new run; the chief is
            clearing the previous run's checkpoints, which no worker may read).
        on_restore: called as `on_restore(history)` with the restored epochs before
            training continues (to log those MLflow missed, in epoch order).

    Returns:
        The history: one dict of metrics per finished epoch, resumed epochs included.

    Raises:
        Preempted: SIGTERM arrived; a checkpoint of the step reached was saved first.
    """
    strategy, model = loop.strategy, loop.model
    history, start_step = checkpoints.restore() if resume else ([], 0)
    if on_restore is not None and history:
        on_restore(history)
    steps = epoch_steps(data, train_cfg)
    train_ds = strategy.experimental_distribute_dataset(data.train)
    val_ds = strategy.experimental_distribute_dataset(data.validation) if data.validation is not None else None
    monitor, sign = _monitored(loop, train_cfg, val_ds is not None)
    best = min((sign * h[monitor] for h in history), default=math.inf)
    since_best = len(history) - 1 - min(range(len(history)), key=lambda i: sign * history[i][monitor]) if history else 0

    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_progbar=True, model=model, verbose=_progress_verbosity(), epochs=train_cfg.epochs, steps=steps
    )
    budget = TimeBudget(train_cfg, steps, loop.schedule, strategy, history) if train_cfg.max_minutes else None
    model.stop_training = False
    callback_list.on_train_begin()
    with _Sigterm() as sigterm:
        for epoch in range(len(history), train_cfg.epochs):
            if train_cfg.early_stopping_patience and since_best >= train_cfg.early_stopping_patience:
                print(f"Early stopping: no better {monitor} for {since_best} epochs", flush=True)
                break
            if budget is not None and budget.done(epoch):
                print(f"Time budget: {budget.spent / 60:.1f} of train.max_minutes {train_cfg.max_minutes:g} spent "
                      f"in {epoch} epochs", flush=True)
                break
            started = clock()
            set_epoch(epoch)  # the epoch's shuffle and negatives: the same ones when it is redone after a restart
            callback_list.on_epoch_begin(epoch)
            # A resumed epoch skips the batches it already trained on.
            ds = train_ds if not start_step else strategy.experimental_distribute_dataset(data.train.skip(start_step))
            logs = loop.train_epoch(ds, steps, callback_list, nan_guard=train_cfg.nan_guard, start_step=start_step,
                                    stop_requested=lambda: sigterm.received)
            if "stopped_at" in logs:
                checkpoints.save(epoch, history, step=logs["stopped_at"])
                raise Preempted(f"preempted (SIGTERM) at step {logs['stopped_at']} of epoch {epoch + 1}; checkpoint saved")
            start_step = 0
            if val_ds is not None:
                loop.swap_averaged_weights()  # validation measures what would be exported (a no-op without EMA)
                logs.update(loop.evaluate(val_ds, prefix="val_"))
                loop.swap_averaged_weights()
            if budget is not None:
                logs.update(budget.after_epoch(epoch + 1, clock() - started))
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
    if history and checkpoints.saved != (len(history), 0):
        checkpoints.save(len(history), history)  # stopped early between checkpoints: keep what was trained
    callback_list.on_train_end()
    return history
