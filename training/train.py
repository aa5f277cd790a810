"""The story of a run: config -> data -> strategy -> model -> train loop -> evaluate -> export -> log.

A run lives in `<runs_dir>/<name>/`: its resolved config, checkpoints,
TensorBoard logs and `state.json` (the MLflow run id and whether it finished).
Running the same command after a crash resumes it; running it after it
finished starts a new run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from training.config import RunConfig
from training.errors import UserError


@dataclasses.dataclass
class TrainResult:
    run_id: str | None
    tracking_uri: str | None
    run_dir: Path
    export_dir: Path | None
    history: list
    test_metrics: dict  # the test metrics and those of the task's report (e.g. the TopPop baseline)


class RunState:
    """`state.json` of a run folder: which MLflow run it is and whether it finished."""

    def __init__(self, run_dir: Path, cfg: RunConfig, fresh: bool, chief: bool = True):
        self.path = run_dir / "state.json"
        previous = json.loads(self.path.read_text()) if self.path.exists() else None
        if previous and previous["status"] == "running" and not fresh:
            if previous["fingerprint"] != cfg.fingerprint():
                changed = _changed_keys(previous["config"], cfg.flat())
                raise UserError(
                    f"{run_dir} holds an unfinished run of `{cfg.name}` with a different config "
                    f"(changed: {', '.join(changed[:5])}). Re-run with the same config to resume it, "
                    "or pass --fresh to start over"
                )
            self.run_id = previous["run_id"]
            self.resumed = True
        else:
            if previous and chief:  # a finished (or abandoned) run: its checkpoints make way for the new one
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            self.run_id = None
            self.resumed = False
        self.cfg = cfg

    def save(self, status: str, export_dir: Path | None = None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"status": status, "run_id": self.run_id, "fingerprint": self.cfg.fingerprint(),
                 "config": self.cfg.flat(), "export": str(export_dir) if export_dir else None}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.path)


def _changed_keys(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def train(cfg: RunConfig, fresh: bool = False) -> TrainResult:
    import keras

    from training import loop, tracking
    from training.tasks import TASKS

    task = TASKS[cfg.task]
    run_dir = Path(cfg.runs_dir) / cfg.name
    # Hardware: strategy (first: multi-worker collectives must be set up before any op runs), precision, XLA.
    # The precision policy must be set before the model is built.
    strategy = loop.make_strategy(cfg.train)
    chief = loop.is_chief(strategy)
    keras.utils.set_random_seed(cfg.seed)
    state = RunState(run_dir, cfg, fresh, chief)
    precision = loop.resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    tracker = tracking.Tracker(cfg, enabled=chief)  # fails here, before training, if MLflow is unreachable

    data = task.load_data(cfg, run_dir)
    with strategy.scope():
        model = task.build_model(cfg, data)
        optimizer = loop.make_optimizer(cfg.train, loop.epoch_steps(data, cfg.train), precision)
        optimizer.build(model.trainable_variables)
        steps = loop.Loop(
            model, optimizer, task.make_loss(cfg, data), lambda: task.make_metrics(cfg, data), strategy,
            jit_compile=loop.resolve_jit(cfg.train.jit_compile, model, lambda: next(iter(data.train))),
            steps_per_execution=cfg.train.steps_per_execution,
            make_eval_metrics=lambda: task.make_eval_metrics(cfg, data),
        )
    # Outside the scope: the epoch, step and history counters are plain host variables on every worker.
    checkpoints = loop.Checkpoints(run_dir / "checkpoints", model, optimizer, cfg.train.keep_checkpoints, chief,
                                   metrics=steps.train_metrics)

    with tracker.run(state.run_id) as state.run_id:  # ends the MLflow run as FINISHED, FAILED or KILLED
        if chief:
            state.save("running")
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
        tracker.set_tags({"data.fingerprint": data.fingerprint, "hardware.precision": precision,
                          "hardware.strategy": type(strategy).__name__, "hardware.replicas": str(strategy.num_replicas_in_sync),
                          **task.data_tags(data)})
        tracker.log_text(cfg.to_yaml(), "config.yaml")

        try:
            # A task may add its own per-epoch callbacks (dialogue: generated samples logged to MLflow).
            extra = task.epoch_callbacks(cfg, model, data, tracker) if hasattr(task, "epoch_callbacks") else []
            history = loop.fit(steps, data, cfg.train, checkpoints, callbacks=[loop.EpochSummaries(run_dir / "tensorboard"), *extra],
                               on_epoch_end=tracker.log_epoch, resume=state.resumed)
        except loop.TrainingDiverged as e:
            raise UserError(f"{e}; the last checkpoint is kept. Lower train.learning_rate or set train.clipnorm") from None
        tracker.log_history(history)  # epochs trained before a crash that MLflow had not yet received

        if cfg.train.restore_best and data.validation is not None:
            loop.barrier(strategy)  # the chief has written the best epoch before anyone reads it
            checkpoints.restore_best()
        test_metrics = {}
        if data.test is not None:
            test_metrics = steps.evaluate(strategy.experimental_distribute_dataset(data.test), prefix="test_")
        report_metrics, figures = task.report(cfg, model, data)
        tracker.log_final({**test_metrics, **report_metrics})
        figures["learning_curves.png"] = tracking.learning_curves(history)
        for name, figure in figures.items():
            tracker.log_figure(figure, name)

        export_dir = None
        if cfg.export.enabled and chief:
            export_dir = export_run(cfg, task, model, data, state.run_id, history, test_metrics)
            tracker.log_artifacts(export_dir, "export")
            tracker.set_tags({"export.path": str(export_dir.resolve())})
    # After MLflow has the run as FINISHED: a kill in between resumes the run, which finds everything done.
    if chief:
        state.save("finished", export_dir)
    return TrainResult(state.run_id, tracker.uri if tracker.enabled else None, run_dir, export_dir, history,
                       {**test_metrics, **report_metrics})

def export_run(cfg, task, model, data, run_id, history=(), test_metrics=None) -> Path:
    """Exports the model as the next version of `<export.dir>/<name>`, once per run."""
    from training import export

    root = Path(cfg.export.dir) / cfg.name
    existing = export.find_run_export(root, run_id)
    if existing is not None:  # exported before a crash: do not write a second version
        return existing
    return _write_export(cfg, task, model, data, run_id, history, test_metrics)


def _write_export(cfg, task, model, data, run_id, history, test_metrics) -> Path:
    from training import export

    metadata = {"task": cfg.task, "name": cfg.name, "run_id": run_id, **task.export_metadata(cfg, data),
                "data_fingerprint": data.fingerprint, "config_fingerprint": cfg.fingerprint(),
                "epochs_trained": len(history), "test_metrics": test_metrics or {}}
    tracked, endpoints = task.serving_endpoints(cfg, model, data)
    verify = task.verification_inputs(cfg, data) if cfg.export.verify else None
    return export.export(tracked, endpoints, Path(cfg.export.dir) / cfg.name, metadata, cfg.to_yaml(), verify)


def _restore(cfg: RunConfig):
    """Rebuilds a run's model from its checkpoint, for `reelml evaluate` and `reelml export`."""
    import tensorflow as tf

    from training import loop
    from training.tasks import TASKS

    task = TASKS[cfg.task]
    run_dir = Path(cfg.runs_dir) / cfg.name
    if not (run_dir / "checkpoints" / "last" / "checkpoint").exists():
        raise UserError(f"{run_dir}: no checkpoint of run `{cfg.name}`; train it first (reelml train ...)")
    data = task.load_data(cfg, run_dir)
    strategy = tf.distribute.get_strategy()
    model = task.build_model(cfg, data)
    optimizer = loop.make_optimizer(cfg.train, loop.epoch_steps(data, cfg.train), "float32")
    optimizer.build(model.trainable_variables)
    checkpoints = loop.Checkpoints(run_dir / "checkpoints", model, optimizer, cfg.train.keep_checkpoints)
    history, _ = checkpoints.restore()
    if cfg.train.restore_best and data.validation is not None:
        checkpoints.restore_best()
    steps = loop.Loop(model, optimizer, task.make_loss(cfg, data), lambda: task.make_metrics(cfg, data), strategy,
                      make_eval_metrics=lambda: task.make_eval_metrics(cfg, data))
    state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
    return task, data, model, steps, history, state.get("run_id")


def evaluate(cfg: RunConfig) -> dict:
    """Validation and test metrics of a run's checkpoint."""
    task, data, model, steps, _, _ = _restore(cfg)
    metrics = {}
    if data.validation is not None:
        metrics.update(steps.evaluate(data.validation, prefix="val_"))
    if data.test is not None:
        metrics.update(steps.evaluate(data.test, prefix="test_"))
    return metrics


def reexport(cfg: RunConfig) -> Path:
    """Exports a run's checkpoint as a new version (e.g. after changing the serving code)."""
    task, data, model, steps, history, run_id = _restore(cfg)
    test_metrics = steps.evaluate(data.test, prefix="test_") if data.test is not None else {}
    return _write_export(cfg, task, model, data, run_id, history, test_metrics)
