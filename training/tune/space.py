"""The space file of a sweep: which config keys a trial draws, from what ranges, and how the sweep searches.

    # reelml tune configs/recommender.yaml --space configs/tune/recommender.yaml --trials 30
    params:                                   # dotted config keys
      train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}   # a float key: a float range
      model.factors: {low: 8, high: 64, step: 8}                     # an int key: an int range
      model.name: [gmf, mlp, neumf]                                  # any key: a list of choices
      model.mlp_layers: [[64, 32], [128, 64, 32]]                    # choices may be lists
    fixed:                                    # every trial, on top of the config (a shorter schedule, ...)
      train.epochs: 8
    start_from_config: true                   # trial 0 is the config's own values: the default to beat
    enqueue: [{model.name: gmf}]              # then these (keys left out are drawn)
    sampler: tpe                              # tpe | random
    pruner: median                            # median | none
    pruner_startup_trials: 3                  # trials that finish before the pruner judges any
    pruner_warmup_epochs: 1                   # epochs of a trial before it can be pruned

A range's type is the config key's own (an int key draws ints). Every key, bound and choice is checked
against the config's schema before any trial runs: an unknown key, a bound the schema refuses (a learning
rate of 20), a range on a key that takes words, or `low >= high`, is exit 2 naming the space file and key.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.config import RUN_CONFIGS, load_config
from training.config.load import format_validation_error
from training.config.yaml12 import short_repr, yaml_load
from training.errors import ConfigError

# Keys a sweep sets itself, or that would make trials other runs than the sweep's.
NOT_TUNABLE = ("name", "task", "runs_dir", "train.monitor", "train.monitor_mode", "tracking.", "export.")


class Range(BaseModel):
    """`{low, high}` (and `log` or `step`): numbers between two bounds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    low: Union[int, float] = Field(..., description="The smallest value a trial may draw.")
    high: Union[int, float] = Field(..., description="The largest value a trial may draw.")
    log: bool = Field(False, description="Draw uniformly in log space (learning rates, regularisation).")
    step: Optional[Union[int, float]] = Field(None, gt=0, description="Only values `low + k * step`.")


class Choices(BaseModel):
    """`{choices: [...]}`: the long form of a list of choices."""

    model_config = ConfigDict(extra="forbid")

    choices: list[Any] = Field(..., min_length=1, description="The values a trial may take.")


class SpaceFile(BaseModel):
    """The keys of a space file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    params: dict[str, Union[Range, Choices, list[Any]]] = Field(..., min_length=1, description="What each trial draws.")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Set in every trial, on top of the config.")
    start_from_config: bool = Field(True, description="Run the config's own values as the first trial.")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="Values to try next (known-good "
                                          "settings), each a mapping of `params` keys; missing keys are drawn.")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler.")
    pruner: Literal["median", "none"] = Field("median", description="Stop trials worse than the median of earlier ones.")
    pruner_startup_trials: int = Field(3, ge=0, description="Finished trials before the pruner judges any.")
    pruner_warmup_epochs: int = Field(1, ge=0, description="Epochs a trial trains before it can be pruned.")


class Param:
    """One drawn key: a range of its config type, or choices (lists and mappings are passed to Optuna as JSON)."""

    def __init__(self, key: str, kind: str, low=None, high=None, log=False, step=None, choices=()):
        self.key, self.kind, self.low, self.high, self.log, self.step = key, kind, low, high, log, step
        self.choices = list(choices)

    def suggest(self, trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        encoded = [_encode(c) for c in self.choices]
        return _decode(trial.suggest_categorical(self.key, encoded))

    def decode(self, stored):
        """A value as Optuna stored it, back as the config's value (lists and mappings were JSON)."""
        return _decode(stored) if self.kind == "choices" else stored

    def encode(self, value):
        """`value` as Optuna stores it (for enqueued trials)."""
        return _encode(value) if self.kind == "choices" else value

    def describe(self) -> str:
        if self.kind == "choices":
            return f"one of {', '.join(short_repr(c) for c in self.choices)}"
        extra = " (log)" if self.log else f" step {self.step}" if self.step else ""
        return f"{self.kind} in [{self.low}, {self.high}]{extra}"

    def contains(self, value) -> bool:
        if self.kind == "choices":
            return _encode(value) in [_encode(c) for c in self.choices]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return self.kind == "float" or float(value).is_integer()


def _encode(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class Space:
    """A parsed and checked space file.

    Attributes:
        path: the space file.
        text: its text (logged to the parent run; part of the study's identity).
        params: the `Param`s, in file order.
        fixed: `{dotted key: value}` set in every trial.
        settings: the `SpaceFile` (sampler, pruner, ...).
    """

    def __init__(self, path: Path, text: str, params: list[Param], fixed: dict, settings: SpaceFile):
        self.path, self.text, self.params, self.fixed, self.settings = path, text, params, fixed, settings

    def suggest(self, trial) -> dict:
        """The trial's values, `{dotted key: value}`."""
        return {p.key: p.suggest(trial) for p in self.params}

    def encode(self, values: dict) -> dict:
        """Config values as Optuna stores them (for enqueued trials)."""
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].encode(v) for k, v in values.items()}

    def config_values(self, cfg_dict: dict) -> dict | None:
        """The config's own value of every drawn key, or None when one lies outside the space."""
        values = {}
        for p in self.params:
            value = _get(cfg_dict, p.key)
            if not p.contains(value):
                return None
            values[p.key] = p.encode(value)
        return values


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _annotation(run_cls, dotted: str):
    """The declared type of a dotted config key (Optional unwrapped), or None if the schema has no such key."""
    model = run_cls
    annotation = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        while typing.get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                break
            annotation = args[0]
        model = annotation
    return annotation


def _range_kind(annotation) -> str | None:
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return None


def load_space(space_path: str | Path, config_path: str | Path, overrides: list[str]) -> Space:
    """Reads a space file and checks every key, bound and choice against the config's schema.

    Args:
        space_path: the space YAML.
        config_path: the sweep's run config.
        overrides: the `--set` overrides of the command, applied before the space.

    Returns:
        The `Space`.

    Raises:
        ConfigError: naming the space file and the key, with what was expected.
    """
    path = Path(space_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the space file ({e})") from None
    data = yaml_load(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `params:` (and `fixed:`, `sampler:`, ...), got "
                          f"{short_repr(data)}")
    try:
        settings = SpaceFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None

    base = load_config(config_path, overrides, values=settings.fixed, source=f"{path} (fixed)")
    run_cls = RUN_CONFIGS[base.task]
    params = [_check_param(path, key, spec, run_cls, config_path, overrides, settings.fixed)
              for key, spec in settings.params.items()]
    by_key = {p.key: p for p in params}
    for i, values in enumerate(settings.enqueue):
        for key, value in values.items():
            if key not in by_key:
                raise ConfigError(f"{path}: enqueue[{i}]: `{key}` is not under `params:`")
            if not by_key[key].contains(value):
                raise ConfigError(f"{path}: enqueue[{i}]: `{key}`: {short_repr(value)} is outside its space "
                                  f"({by_key[key].describe()})")
    if not base.train.monitor.startswith("val_"):
        where = f"{path} (fixed)" if "train.monitor" in settings.fixed else str(config_path)
        raise ConfigError(f"{where}: key `train.monitor`: got {base.train.monitor!r}: a sweep chooses on a "
                          "validation metric (val_...), never on training or test data")
    return Space(path, text, params, dict(settings.fixed), settings)


def _check_param(path, key, spec, run_cls, config_path, overrides, fixed) -> Param:
    where = f"{path}: params `{key}`"
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_TUNABLE):
        raise ConfigError(f"{where}: the sweep sets this key itself (or it would make trials of another run); "
                          "set it in the config or under `fixed:`")
    if key in fixed:
        raise ConfigError(f"{where}: also under `fixed:`; a key is either drawn or fixed")
    annotation = _annotation(run_cls, key)
    if annotation is None:
        load_config(config_path, overrides, values={**fixed, key: None}, source=where)  # names the unknown key
        raise ConfigError(f"{where}: key `{key}` does not exist (docs/config.md lists every key)")
    if isinstance(getattr(annotation, "model_fields", None), dict):
        raise ConfigError(f"{where}: `{key}` is a section; name one of its keys")

    if isinstance(spec, Range):
        kind = _range_kind(annotation)
        if kind is None:
            takes = (f"one of {', '.join(map(repr, typing.get_args(annotation)))}"
                     if typing.get_origin(annotation) is Literal else getattr(annotation, "__name__", str(annotation)))
            raise ConfigError(f"{where}: a range {{low, high}} needs a number key; `{key}` takes {takes}: give a list "
                              "of choices")
        low, high = spec.low, spec.high
        if kind == "int" and not all(isinstance(v, int) for v in (low, high, spec.step or 1)):
            raise ConfigError(f"{where}: `{key}` is an integer key: low, high and step must be integers")
        if low >= high:
            raise ConfigError(f"{where}: low {low} must be below high {high} (for one value, use `fixed:`)")
        if spec.log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        if spec.log and spec.step is not None:
            raise ConfigError(f"{where}: `log` and `step` do not go together; give one")
        if spec.step is not None:
            k = (high - low) / spec.step
            if abs(k - round(k)) > 1e-9:
                raise ConfigError(f"{where}: high - low ({high - low}) must be a multiple of step {spec.step}")
        for name, value in (("low", low), ("high", high)):
            load_config(config_path, overrides, values={**fixed, key: value}, source=f"{where} {name}={value}")
        return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                     spec.log, spec.step)

    choices = spec.choices if isinstance(spec, Choices) else spec
    if not choices:
        raise ConfigError(f"{where}: an empty list of choices")
    encoded = [_encode(c) for c in choices]
    if len(set(map(str, encoded))) != len(encoded):
        raise ConfigError(f"{where}: a choice is listed twice")
    for choice in choices:
        load_config(config_path, overrides, values={**fixed, key: choice},
                    source=f"{where} choice {short_repr(choice)}")
    return Param(key, "choices", choices=choices)
