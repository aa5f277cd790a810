"""The sections every run has (`train`, `tracking`, `export`) and `RunConfig`, the base of each task's schema.

Every section is strict: unknown keys, booleans for numbers and non-finite floats fail.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
import urllib.parse
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from training.config.yaml12 import short_repr



def _wants_number(annotation, value) -> Optional[str]:
    """`"an integer"` or `"a number"` where `value` holds a boolean at a place `annotation` wants an int or
    float (pydantic would read `true` as 1), else None. Looks inside lists, Optional and Union."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is bool:
        return None
    if annotation in (int, float):
        return ("an integer" if annotation is int else "a number") if isinstance(value, bool) else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if any(a is bool or a is Any for a in args):
            return None
        return next((w for a in args if (w := _wants_number(a, value))), None)
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple, set, frozenset)) and args:
        return next((w for v in value if (w := _wants_number(args[0], v))), None)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return next((w for v in value.values() if (w := _wants_number(args[1], v))), None)
    return None


class Section(BaseModel):
    # Unknown keys are errors (typos must not become silent new keys); a value
    # assigned later is validated again. Numbers are finite: `.inf` and `.nan`
    # are errors, and so are booleans where a number is expected.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        wanted = _wants_number(field.annotation, value) if field is not None else None
        if wanted:
            raise ValueError(f"got {short_repr(value)}: expected {wanted}, not a boolean")
        return value


class Train(Section):
    """The optimisation: how long, how fast, on what hardware."""

    epochs: int = Field(30, ge=1, description="Passes over the training data.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Keras optimizer.")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="`cosine`: linear warm-up, then cosine decay to zero at the last epoch."
    )
    warmup_epochs: float = Field(1.0, ge=0.0, description="Linear learning-rate warm-up (epochs), for `cosine`.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum, for `sgd`.")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="Decoupled weight decay, for `adamw`.")
    l2: float = Field(0.0, ge=0.0, lt=1.0, description="L2 regularisation added to the loss for every kernel.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the classification loss.")
    clipnorm: Optional[float] = Field(None, gt=0.0, description="Clip each gradient to this norm (unset: no clipping).")
    ema_momentum: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="Keep an exponential moving average of the weights, updated every step with this "
        "momentum (Keras' `use_ema`, e.g. 0.99): it is what validation measures, what the best epoch keeps and what is "
        "tested and exported; steadier than the last step's weights. Unset: the weights as trained."
    )
    monitor: str = Field(
        "val_loss", pattern=r"^[A-Za-z0-9_]+$",
        description="Epoch metric that picks the best epoch and drives early stopping, e.g. `val_hr_at_10` (always a "
        "validation metric: test data never chooses)."
    )
    monitor_mode: Literal["min", "max"] = Field("min", description="Whether a lower (`min`, losses) or higher (`max`, hit rates) `monitor` is better.")
    max_minutes: Optional[float] = Field(
        None, gt=0.0, description="Training time budget in minutes (a resumed run counts the time already spent): the "
        "epochs that fit are planned from the measured epoch time after the first epoch, the cosine schedule ends with "
        "them, and training stops there; the best (or last) epoch is evaluated and exported. Unset: `train.epochs` alone."
    )
    early_stopping_patience: Optional[int] = Field(
        None, ge=1, description="Stop after this many epochs without a better `train.monitor` (unset: never)."
    )
    restore_best: bool = Field(
        True, description="Evaluate and export the weights of the epoch with the best `train.monitor`, not the last epoch."
    )
    steps_per_execution: int = Field(1, ge=1, description="Training steps run inside one compiled call (fewer Python round-trips).")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="Cap on steps per epoch (smoke tests, quick checks).")
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = Field(
        "auto",
        description="tf.distribute strategy: `auto` trains over a cluster when TF_CONFIG, a SLURM job step or "
        "`train.cluster_workers` describes one, else mirrors over all local GPUs when there are several, else one device; "
        "`multi_worker` insists on a cluster.",
    )
    cluster_workers: Optional[list[str]] = Field(
        None, description="`host:port` of every worker, in order, when neither TF_CONFIG nor a SLURM job step describes "
        "the cluster (then `auto` and `multi_worker` train over them)."
    )
    worker_index: Optional[int] = Field(None, ge=0, description="This process's place in `train.cluster_workers` (0 is the chief).")
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="`auto`: mixed_float16 on GPUs that have tensor cores, float32 elsewhere."
    )
    jit_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="XLA for the training step: `auto` turns it on for GPUs and off on CPU (slower there) or for models "
        "with ops XLA cannot compile; `on` insists."
    )
    checkpoint_every_epochs: int = Field(1, ge=1, description="Checkpoint the run every this many epochs (and at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    nan_guard: bool = Field(True, description="Stop with a clear error when the loss becomes NaN or infinite.")

    @model_validator(mode="after")
    def _cluster_needs(self):
        if (self.cluster_workers is None) != (self.worker_index is None):
            raise ValueError("keys `train.cluster_workers` and `train.worker_index` go together: set both or neither")
        if self.cluster_workers is not None and self.worker_index >= len(self.cluster_workers):
            raise ValueError(f"key `train.worker_index`: got {self.worker_index}: expected less than the "
                             f"{len(self.cluster_workers)} entries of `train.cluster_workers`")
        return self


# The tracking stores MLflow can open (mlflow.tracking._tracking_service.utils), by URI scheme.
TRACKING_URI_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
_DB_SCHEME = re.compile(r"(?:sqlite|postgresql|mysql|mssql)(?:\+[a-z0-9_]+)?")


def tracking_uri_problem(uri: str) -> Optional[str]:
    """Why MLflow cannot use `uri` as a tracking store (its scheme), or None if it can."""
    scheme = urllib.parse.urlparse(uri).scheme  # lower-cased; MLflow reads it the same way
    if not scheme or len(scheme) == 1 or scheme in TRACKING_URI_SCHEMES or _DB_SCHEME.fullmatch(scheme):
        return None  # a local path (a Windows drive letter too), or a scheme MLflow opens
    return (f"scheme `{scheme}:` is not one MLflow can track to; expected a local path or a URI starting with "
            "file:, sqlite:, postgresql:, mysql:, mssql: (or dialect+driver:, e.g. postgresql+psycopg2:), "
            "http:, https:, databricks, databricks-uc or uc:")


_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_condition(text: str) -> tuple[str, str, float]:
    """`'test_accuracy>=0.85'` -> `("test_accuracy", ">=", 0.85)`; ValueError, worded for the config, otherwise."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"got {short_repr(text)}: expected METRIC OP NUMBER with OP one of >=, >, <=, <, ==, "
                         "e.g. 'test_accuracy>=0.85'")
    return match.group(1), match.group(2), float(match.group(3))


class Tracking(Section):
    """Where the run is recorded."""

    uri: Optional[str] = Field(
        None, description="MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory."
    )
    experiment: str = Field("reelml", min_length=1, description="MLflow experiment name.")
    run_name: Optional[str] = Field(None, description="MLflow run name; unset: the config's `name`.")
    enabled: bool = Field(True, description="Track the run in MLflow (turn off for throwaway runs).")
    register_model: bool = Field(
        True, description="Register the run's MLflow model (its export, logged as `model`) under the config's `name`, so "
        "`models:/NAME@ALIAS` finds it (`reelml promote`, `reelml predict`, `mlflow models serve`)."
    )
    promote_if: Optional[str] = Field(
        None, description="Point the alias `champion` at the new version when this holds on the run's final metrics, e.g. "
        "`test_accuracy>=0.85` (METRIC OP NUMBER, OP one of >=, >, <=, <, ==); unset: promote by hand (`reelml promote`)."
    )

    @field_validator("promote_if")
    @classmethod
    def _a_condition(cls, text):
        if text is not None:
            parse_condition(text)
        return text

    @model_validator(mode="after")
    def _promote_needs_registry(self):
        if self.promote_if is not None and not self.register_model:
            raise ValueError("key `tracking.promote_if` needs `tracking.register_model: true` (only a registered version "
                             "can be promoted)")
        return self

    @field_validator("uri")
    @classmethod
    def _mlflow_can_open(cls, uri):
        if uri is not None and (problem := tracking_uri_problem(uri)):
            raise ValueError(problem)
        return uri


class Export(Section):
    """The SavedModel written at the end of a run."""

    enabled: bool = Field(True, description="Write a SavedModel when training ends.")
    dir: str = Field("exports", description="Exports go to `<dir>/<name>/<version>/` (the layout TF Serving watches).")
    verify: bool = Field(True, description="Reload the export in a fresh process that cannot import reelml and compare outputs.")


class RunConfig(Section):
    """One training run: the sections every task shares. Each task adds its `data` and `model`."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: names the run folder, the export folder and the MLflow run."
    )
    task: str = Field("frames", description="What is learned (a task below); picks the schema of `data` and `model`, the pipeline, metrics and signatures.")
    seed: int = Field(1234, ge=0, description="Seeds Python, NumPy, TensorFlow and the data split, for reproducible runs.")
    runs_dir: str = Field("runs", description="Checkpoints, TensorBoard logs and the resolved config go to `<runs_dir>/<name>/`.")
    train: Train = Field(default_factory=Train, description="Optimisation.")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow tracking.")
    export: Export = Field(default_factory=Export, description="SavedModel export.")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the resolved config: identifies which run a checkpoint belongs to."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """The config as `{"train.learning_rate": 0.001, ...}` (MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out
