"""The task contract: every hook that `train.py`, `predict.py` and `cli.py` call, written once.

A task is what is learned (frames, dialogue, ...): a package under
`training/tasks/` whose `__init__.py` defines a subclass of `Task` and whose
files each hold one concept (`data.py`, `serving.py`, `report.py`,
`predict.py`, ...). `training/tasks/__init__.py` maps each config's `task:` to an
instance in the plain dict `TASKS`. To add a task: copy a package, implement the
abstract hooks below, add its config schema to `training/config.py` and its
entry to `TASKS` (docs/architecture.md walks through it).

The flow of a run, and where each hook is called:

    load_data -> build_model -> make_loss / make_metrics / make_eval_metrics   (train.build)
    data_tags, epoch_callbacks                                                 (train.train, before the loop)
    calibrate -> report -> export_metadata / serving_endpoints / verification_inputs   (after training, on export)
    predict_arguments -> predict -> csv_fields                                 (reelml predict)
    predict_hint                                                               (the summary after `reelml train`)
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclasses.dataclass
class TaskData:
    """What the training loop reads of a task's data; each task's `Data` adds its own fields.

    Attributes:
        train: batches of `(inputs, targets)` at the global batch size, repeated
            for as many steps as an epoch has (the loop takes `train_steps`).
        validation: batches of `(inputs, targets)`, or None when nothing is held out.
        test: batches of `(inputs, targets)`, or None.
        train_steps: batches per epoch.
        fingerprint: a hash of the training data: which data made this model.
        counts: examples per split (and skipped inputs), logged as tags.
    """

    train: Any
    validation: Any
    test: Any
    train_steps: int
    fingerprint: str
    counts: dict


# `report(path, reason)`: an input `predict` could not read; it is skipped and listed on stderr.
Report = Callable[[str, str], None]


class Task(abc.ABC):
    """The hooks of one task. Subclasses implement the abstract ones; the others have defaults."""

    name: str = ""

    # ------------------------------------------------------------------ training

    @abc.abstractmethod
    def load_data(self, cfg, run_dir: Path) -> TaskData:
        """Reads, splits and batches the data of a run.

        Args:
            cfg: the validated run config (`cfg.data` is this task's section).
            run_dir: the run folder, for caches.

        Returns:
            The task's `TaskData` subclass.

        Raises:
            UserError: a missing or malformed file, folder or dataset, named.
        """

    @abc.abstractmethod
    def build_model(self, cfg, data: TaskData):
        """The Keras model, from `models.MODELS[cfg.model.name]` and what the data says (classes, vocabulary)."""

    @abc.abstractmethod
    def make_loss(self, cfg, data: TaskData) -> Callable:
        """`loss(y_true, y_pred)` -> per-example losses `[batch]` (the loop averages over the global batch)."""

    @abc.abstractmethod
    def make_metrics(self, cfg, data: TaskData) -> list:
        """Keras metrics updated as `metric.update_state(y_true, y_pred)` on training batches."""

    def make_eval_metrics(self, cfg, data: TaskData) -> list:
        """Metrics for validation and test batches; by default the training ones."""
        return self.make_metrics(cfg, data)

    def data_tags(self, data: TaskData) -> dict[str, str]:
        """MLflow tags that describe the data (sizes, classes)."""
        return {f"data.{k}": str(v) for k, v in data.counts.items()}

    def epoch_callbacks(self, cfg, model, data: TaskData, tracker) -> list:
        """Extra Keras callbacks for the loop (e.g. generated samples logged each epoch); none by default."""
        return []

    # ------------------------------------------------------------------ after training

    def calibrate(self, cfg, model, data: TaskData) -> dict | None:
        """What is fitted on the trained model besides its weights (e.g. an anomaly threshold).

        Returns:
            None (the default), or a dict that `report`, `export_metadata` and
            `serving_endpoints` receive as `calibration`.
        """
        return None

    @abc.abstractmethod
    def report(self, cfg, model, data: TaskData, calibration: dict | None) -> tuple[dict[str, float], dict]:
        """End-of-training metrics beyond the loop's, and figures.

        Returns:
            `(metrics, figures)`: `{name: float}` logged once, and `{file name: matplotlib figure}`
            logged under `plots/`.
        """

    @abc.abstractmethod
    def export_metadata(self, cfg, data: TaskData, calibration: dict | None) -> dict:
        """What `assets.extra/reelml.json` records for `reelml predict` (class names, the kind of input ...)."""

    @abc.abstractmethod
    def serving_endpoints(self, cfg, model, data: TaskData, calibration: dict | None) -> tuple[Any, dict]:
        """The export's signatures.

        Returns:
            `(tracked, endpoints)`: the Keras model or layer whose variables the
            export saves, and `{signature name: (tf.function, [tf.TensorSpec(name=...)])}`;
            `serving_default` is the one TF Serving calls by default.
        """

    @abc.abstractmethod
    def verification_inputs(self, cfg, data: TaskData) -> dict:
        """`{signature: {input name: value}}` that the export check runs before and after reloading."""

    # ------------------------------------------------------------------ reelml predict

    def predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this task's flags to `reelml predict` (after EXPORT_DIR, --output and --format)."""

    @abc.abstractmethod
    def predict(self, loaded, metadata: dict, report: Report, **options) -> Iterator[dict]:
        """Runs a loaded export; yields one row (a flat dict) per result.

        Args:
            loaded: what `tf.saved_model.load` returned.
            metadata: the export's `assets.extra/reelml.json`.
            report: called for each input that cannot be read, which is then skipped.
            **options: the values of the flags `predict_arguments` added, by name.

        Raises:
            UserError: a bad flag value or input, named.
        """

    def csv_fields(self, row: dict) -> list[str]:
        """The CSV columns, in order, given the first row."""
        return list(row)

    def predict_hint(self, cfg) -> str:
        """The arguments after `reelml predict EXPORT_DIR` shown once a run has exported."""
        return "INPUT..."
