"""One trial of a sweep: a normal `reelml train` run of the config with the trial's values, as a child MLflow run.

A trial's run folder is `runs/<name>/tune/trials/<name>-trial-<N>/` (N: the trial, or the trial it retries,
so a retry resumes from the dead trial's checkpoint in its MLflow run). Trials do not export or register a
model, and leave the test split unseen: the sweep chooses on validation only, and `best.yaml` measures test
once. After each epoch the validation metric goes to Optuna, whose pruner may stop the trial; a pruned
trial's MLflow run ends KILLED, tagged `reelml.stopped` with why.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from pathlib import Path

from training.config import load_config
from training.errors import ConfigError, Diverged, Stopped, UserError
from training.run_dir import read_state
from training.tune.study import ENDED, RETRY_OF, Heartbeat

RUN_ID, RUN_DIR = "reelml.run_id", "reelml.run_dir"


@dataclasses.dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    note: str  # why it was pruned or failed
    epochs: int


def trial_config(config_path, overrides, space, values: dict, base, root: int, source: str):
    """The run config of a trial: the sweep's config, `fixed:`, the trial's values, its own name and folder."""
    return load_config(config_path, overrides, source=source, values={
        **space.fixed, **values,
        "name": f"{base.name}-trial-{root}",
        "runs_dir": str(Path(base.runs_dir) / base.name / "tune" / "trials"),
        "export.enabled": False, "tracking.promote_if": None, "tracking.register_model": False,
        "tracking.run_name": None,
    })


def best_epoch_value(history: list[dict], monitor: str, mode: str) -> float:
    """The objective of a finished trial: its best epoch's `monitor` (the weights `restore_best` keeps)."""
    values = [h[monitor] for h in history if monitor in h and math.isfinite(h[monitor])]
    if not values:
        raise UserError(f"train.monitor `{monitor}`: no epoch measured it")
    return min(values) if mode == "min" else max(values)


def run_trial(trial, values: dict, space, base, config_path, overrides, parent) -> Outcome:
    """Trains one trial and reports its epochs to Optuna; the caller tells Optuna the outcome.

    Raises:
        UserError: a problem every trial would have (the data, no validation split): the sweep stops.
        KeyboardInterrupt: SIGTERM or Ctrl-C; the trial's checkpoint is saved, and the caller retries it.
    """
    import keras

    from training.train import train

    root = trial.user_attrs.get(RETRY_OF, trial.number)
    monitor, mode = base.train.monitor, base.train.monitor_mode
    try:
        cfg = trial_config(config_path, overrides, space, values, base, root, f"{space.path} (trial {trial.number})")
    except ConfigError as e:  # the schema refuses this combination of values (each alone was checked)
        return Outcome("FAIL", None, f"config refused: {e}", 0)
    run_dir = Path(cfg.runs_dir) / cfg.name
    trial.set_user_attr(RUN_DIR, str(run_dir))
    epochs = []

    def on_epoch(epoch, logs):
        if monitor not in logs:
            raise UserError(f"train.monitor `{monitor}`: not measured by this run (it has no validation split?); a "
                            "sweep chooses on validation data: hold some out (e.g. data.validation_split)")
        epochs.append(epoch)
        trial.report(logs[monitor], epoch)
        if trial.should_prune():
            raise Stopped(f"pruned by Optuna's {space.settings.pruner} pruner at epoch {epoch} of {cfg.train.epochs}: "
                          f"{monitor} {logs[monitor]:.5g} is worse than the median of earlier trials there")

    try:
        with Heartbeat(trial):
            result = train(cfg, tags=parent.child_tags(trial, values), on_epoch=on_epoch, held_out=False)
        return Outcome("COMPLETE", best_epoch_value(result.history, monitor, mode), "", len(result.history))
    except Stopped as e:
        return Outcome("PRUNED", None, e.reason, len(epochs))
    except Diverged as e:
        return Outcome("FAIL", None, f"diverged: {e}", len(epochs))
    finally:
        state = _state(run_dir)
        if state.get("run_id"):
            trial.set_user_attr(RUN_ID, state["run_id"])
        keras.backend.clear_session()  # the next trial builds its model from a clean slate
        gc.collect()


def _state(run_dir) -> dict:
    try:
        return read_state(run_dir) or {}
    except UserError:
        return {}


def note(trial, text: str) -> None:
    if text:
        trial.set_user_attr(ENDED, text[:2000])
