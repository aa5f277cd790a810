"""The story of a run: config -> data -> strategy -> model -> train loop -> evaluate -> export -> log.

A run lives in `<runs_dir>/<name>/`: its resolved config, checkpoints,
TensorBoard logs and `state.json` (the MLflow run id and whether it finished).
Running the same command after a crash resumes it; running it after it
finished starts a new run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from training.config import RunConfig
from training.errors import Diverged, UserError
from training.run_dir import RunLock, RunState, read_state


@dataclasses.dataclass
class TrainResult:
    run_id: str | None
    tracking_uri: str | None
    run_dir: Path
    export_dir: Path | None
    history: list
    test_metrics: dict  # the test metrics and those of the task's report (e.g. the TopPop baseline)
    run_page: str | None = None  # where MLflow's UI shows the run


@dataclasses.dataclass
class Built:
    """What `build` makes for a run: the same for `reelml train`, `evaluate` and `export`."""

    task: object
    data: object
    precision: str
    model: object
    steps: object  # loop.Loop
    checkpoints: object  # loop.Checkpoints


def build(cfg: RunConfig, run_dir: Path, strategy, chief: bool = True) -> Built:
    """Data, model, optimizer, compiled steps and checkpoints of a run, exactly as training builds them.

    `evaluate` and `export` restore a checkpoint into this same build (precision policy, loss scaling,
    XLA, steps per execution), so the weights they read are the ones training wrote, and the model
    they export computes as the trained one did.
    """
    import keras

    from training import checkpoints as ckpt
    from training import hardware, loop
    from training.tasks import TASKS

    task = TASKS[cfg.task]
    precision = hardware.resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)  # before the model is built
    data = task.load_data(cfg, run_dir)
    with strategy.scope():
        model = task.build_model(cfg, data)
        steps_per_epoch = loop.epoch_steps(data, cfg.train)
        schedule = loop.make_schedule(cfg.train, steps_per_epoch)
        optimizer = loop.make_optimizer(cfg.train, steps_per_epoch, precision, schedule)
        optimizer.build(model.trainable_variables)
        steps = loop.Loop(
            model, optimizer, task.make_loss(cfg, data), lambda: task.make_metrics(cfg, data), strategy,
            jit_compile=hardware.resolve_jit(cfg.train.jit_compile, model, lambda: next(iter(data.train))),
            steps_per_execution=cfg.train.steps_per_execution,
            make_eval_metrics=lambda: task.make_eval_metrics(cfg, data), schedule=schedule,
        )
    # Outside the scope: the epoch, step and history counters are plain host variables on every worker.
    checkpoints = ckpt.Checkpoints(run_dir / "checkpoints", model, optimizer, cfg.train.keep_checkpoints, chief,
                                   metrics=steps.train_metrics)
    return Built(task, data, precision, model, steps, checkpoints)


def _name_changed_keys(run_dir: Path, cfg: RunConfig, error):
    """A checkpoint mismatch, with the config keys that differ from the run's own config."""
    from training.checkpoints import CheckpointMismatch

    previous = (read_state(run_dir) or {}).get("config") or {}
    changed = [f"{k}: {previous.get(k)!r} in the run, {v!r} now" for k, v in cfg.flat().items()
               if k in previous and previous[k] != v]
    hint = f"; changed since the run: {'; '.join(changed[:5])}" if changed else ""
    return CheckpointMismatch(error.path, error.detail + hint +
                              ". Use the run's own config, or train this one under another `name` (or with --fresh)")


def train(cfg: RunConfig, fresh: bool = False, tags: dict | None = None, on_epoch=None,
          held_out: bool = True) -> TrainResult:
    """Trains a run (or resumes its unfinished one), tracks it in MLflow and exports it.

    Args:
        cfg: the validated run config.
        fresh: start over even if the run folder holds an unfinished run.
        tags: MLflow tags set on the run (a sweep's `mlflow.parentRunId`, trial number and parameters).
        on_epoch: called as `on_epoch(epoch, logs)` after each checkpointed epoch (1-based), restored epochs
            first; it may raise `training.errors.Stopped` to end the run early (a sweep pruning a trial).
        held_out: measure the test split at the end; False leaves it unseen (a sweep's trials choose on
            validation only, and the best trial's config measures test once).

    Returns:
        The `TrainResult`.
    """
    import keras

    from training import export, hardware, loop, tracking
    from training.checkpoints import CheckpointMismatch

    run_dir = Path(cfg.runs_dir) / cfg.name
    # Hardware: strategy first (multi-worker collectives must be set up before any op runs).
    strategy = hardware.make_strategy(cfg.train)
    chief = hardware.is_chief(strategy)
    keras.utils.set_random_seed(cfg.seed)
    with RunLock(run_dir, "train") if chief else contextlib.nullcontext():  # one trainer per run folder
        state = RunState(run_dir, cfg, fresh, chief)
        if chief:
            export.remove_stale_temp(Path(cfg.export.dir) / cfg.name)  # left by an export that was killed
        tracker = tracking.Tracker(cfg, enabled=chief, tags=tags)  # fails here, before training, if MLflow is unreachable
        b = build(cfg, run_dir, strategy, chief)
        task, data, model, steps, checkpoints = b.task, b.data, b.model, b.steps, b.checkpoints
        if not held_out:
            data.test = None
        if chief and state.run_id is None:
            state.save("starting")  # the attempt token first: a kill once the MLflow run exists finds it again

        def started(run_id):  # the MLflow run exists (or tracking is off): its id is saved before anything is logged
            state.run_id = run_id
            if chief:
                state.save("running")

        with tracker.run(state.run_id, state.attempt, on_start=started):  # ends the run as FINISHED, FAILED or KILLED
            if chief:
                (run_dir / "config.yaml").write_text(cfg.to_yaml())
            tracker.set_tags({"data.fingerprint": data.fingerprint, "hardware.precision": b.precision,
                              "hardware.strategy": type(strategy).__name__,
                              "hardware.replicas": str(strategy.num_replicas_in_sync), **task.data_tags(data)})
            tracker.log_text(cfg.to_yaml(), "config.yaml")
            tracker.log_datasets(cfg, data)

            try:
                # A task may add its own per-epoch callbacks (dialogue: generated samples logged to MLflow).
                extra = task.epoch_callbacks(cfg, model, data, tracker)
                history = loop.fit(steps, data, cfg.train, checkpoints,
                                   callbacks=[loop.EpochSummaries(run_dir / "tensorboard"), *extra],
                                   on_epoch_end=_then(tracker.log_epoch, on_epoch), resume=state.resumed,
                                   on_restore=_then(tracker.log_history, on_epoch and _each_epoch(on_epoch)))
            except loop.TrainingDiverged as e:
                raise Diverged(f"{e}; the last checkpoint is kept. Lower train.learning_rate or set train.clipnorm") from None
            except CheckpointMismatch as e:
                raise _name_changed_keys(run_dir, cfg, e) from None

            if cfg.train.restore_best and data.validation is not None:
                hardware.barrier(strategy)  # the chief has written the best epoch before anyone reads it
                checkpoints.restore_best()
            steps.adopt_averaged_weights()  # train.ema_momentum: the averaged weights are the model from here on
            test_metrics = {}
            if data.test is not None:
                test_metrics = steps.evaluate(strategy.experimental_distribute_dataset(data.test), prefix="test_")
            calibration = task.calibrate(cfg, model, data)  # fitted on the final weights, shipped in the export
            report_metrics, figures = task.report(cfg, model, data, calibration)
            tracker.log_final({**test_metrics, **report_metrics})
            figures["learning_curves.png"] = tracking.learning_curves(history)
            for name, figure in figures.items():
                tracker.log_figure(figure, name)

            export_dir = None
            if cfg.export.enabled and chief:
                export_dir = export_run(cfg, task, model, data, calibration, state.run_id, history, test_metrics)
                tracker.log_artifacts(export_dir, "export")
                tracker.set_tags({"export.path": str(export_dir.resolve())})
                tracker.log_model(cfg, task, data, export_dir, {**test_metrics, **report_metrics})
        # After MLflow has the run as FINISHED: a kill in between resumes the run, which finds everything done.
        if chief:
            state.save("finished", export_dir)
    return TrainResult(state.run_id, tracker.uri if tracker.enabled else None, run_dir, export_dir, history,
                       {**test_metrics, **report_metrics}, tracker.run_page())


def _then(first, second):
    """`first(*args)`, then `second(*args)` when there is one."""
    if second is None:
        return first

    def both(*args):
        first(*args)
        second(*args)
    return both


def _each_epoch(on_epoch):
    """`on_epoch` over a restored history: `on_epoch(1, history[0])`, `on_epoch(2, history[1])`, ..."""
    return lambda history: [on_epoch(epoch, logs) for epoch, logs in enumerate(history, start=1)]


def export_run(cfg, task, model, data, calibration, run_id, history=(), test_metrics=None) -> Path:
    """Exports the model as the next version of `<export.dir>/<name>`, once per run."""
    from training import export

    root = Path(cfg.export.dir) / cfg.name
    existing = export.find_run_export(root, run_id)
    if existing is not None:  # exported before a crash: do not write a second version
        return existing
    return _write_export(cfg, task, model, data, calibration, run_id, history, test_metrics)


def _write_export(cfg, task, model, data, calibration, run_id, history, test_metrics) -> Path:
    from training import export

    metadata = {"task": cfg.task, "name": cfg.name, "run_id": run_id, **task.export_metadata(cfg, data, calibration),
                "data_fingerprint": data.fingerprint, "config_fingerprint": cfg.fingerprint(),
                "epochs_trained": len(history), "test_metrics": test_metrics or {}}
    tracked, endpoints = task.serving_endpoints(cfg, model, data, calibration)
    verify = task.verification_inputs(cfg, data) if cfg.export.verify else None
    return export.export(tracked, endpoints, Path(cfg.export.dir) / cfg.name, metadata, cfg.to_yaml(), verify)


def _restore(cfg: RunConfig):
    """Rebuilds a run's model from its checkpoint, for `reelml evaluate` and `reelml export`."""
    import keras
    import tensorflow as tf

    run_dir = _trained_run_dir(cfg)
    state = read_state(run_dir) or {}
    keras.utils.set_random_seed(cfg.seed)
    b = build(cfg, run_dir, tf.distribute.get_strategy())
    from training.checkpoints import CheckpointMismatch

    try:
        history, _ = b.checkpoints.restore()
        if not history and b.checkpoints.saved is None:
            raise UserError(f"{run_dir / 'checkpoints' / 'last'}: no readable checkpoint (every one is damaged); "
                            "train the run again (reelml train ... --fresh)")
        if cfg.train.restore_best and b.data.validation is not None:
            b.checkpoints.restore_best()
    except CheckpointMismatch as e:
        raise _name_changed_keys(run_dir, cfg, e) from None
    b.steps.adopt_averaged_weights()
    return b.task, b.data, b.model, b.steps, history, state.get("run_id")


def _trained_run_dir(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.runs_dir) / cfg.name
    if not (run_dir / "checkpoints" / "last" / "checkpoint").exists():
        raise UserError(f"{run_dir}: no checkpoint of run `{cfg.name}`; train it first (reelml train ...)")
    return run_dir


def evaluate(cfg: RunConfig) -> dict:
    """Validation and test metrics of a run's checkpoint."""
    with RunLock(_trained_run_dir(cfg), "evaluate"):
        task, data, model, steps, _, _ = _restore(cfg)
        metrics = {}
        if data.validation is not None:
            metrics.update(steps.evaluate(data.validation, prefix="val_"))
        if data.test is not None:
            metrics.update(steps.evaluate(data.test, prefix="test_"))
    return metrics


def reexport(cfg: RunConfig) -> Path:
    """Exports a run's checkpoint as a new version (e.g. after changing the serving code)."""
    with RunLock(_trained_run_dir(cfg), "export"):
        task, data, model, steps, history, run_id = _restore(cfg)
        test_metrics = steps.evaluate(data.test, prefix="test_") if data.test is not None else {}
        calibration = task.calibrate(cfg, model, data)
        return _write_export(cfg, task, model, data, calibration, run_id, history, test_metrics)
