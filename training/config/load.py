"""Reading a config: files with `base:`, `--set` overrides, validation against the task's schema, messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.errors import ConfigError
from training.config.autoencoder import AutoencoderRun
from training.config.dialogue import DialogueRun
from training.config.frames import FramesRun
from training.config.recommender import RecommenderRun
from training.config.sections import RunConfig
from training.config.yaml12 import short_repr, yaml_load


# `task:` picks the schema of the whole file.
RUN_CONFIGS: dict[str, type[RunConfig]] = {
    "frames": FramesRun,
    "recommender": RecommenderRun,
    "autoencoder": AutoencoderRun,
    "dialogue": DialogueRun,
}


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Reads a config file, resolving `base:` (relative to the file) recursively."""
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise ConfigError(f"{short_repr(str(path))}: cannot read the config ({e})") from None
    if not exists:
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: expected a YAML file, found a directory")
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(f"{path}: `base:` chain loops back to itself ({' -> '.join(str(p) for p in chain + (resolved,))})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    data = yaml_load(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip() or "\0" in base:
        raise ConfigError(f"{path}: key `base`: expected a path to another YAML config, got {short_repr(base)}")
    parent = _read_yaml_file(path.parent / base, chain + (resolved,))
    return _deep_merge(parent, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses one `--set dotted.key=value` into (["dotted", "key"], value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.epochs=5")
    parts = key.split(".")
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {text!r}: `{key}` is not a dotted key (letters, digits and _ separated by dots)")
    value = yaml_load(raw, f"--set {key}", key_prefix=key) if raw.strip() else None
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: `{'.'.join(parts[: i + 1])}` is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe_expected(err: dict) -> str:
    if err["type"] == "literal_error":
        return f"expected one of {(err.get('ctx') or {}).get('expected')}"
    msg = err["msg"]
    return msg[0].lower() + msg[1:]


def _clean_loc(loc) -> str:
    # Union branches show up in the location as tags like `list[int]`: they are not keys.
    return ".".join(str(p) for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)))


def format_validation_error(e: ValidationError, source: str) -> str:
    lines, by_key = [], {}
    for err in e.errors():
        by_key.setdefault(_clean_loc(err["loc"]), []).append(err)
    for loc, errs in by_key.items():
        err = errs[0]
        if err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            # Checks across fields name their keys themselves.
            lines.append(f"{source}: {msg}" if msg.startswith("key `") or not loc else f"{source}: key `{loc}`: {msg}")
        elif err["type"] == "missing":
            lines.append(f"{source}: key `{loc}` is required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{source}: key `{loc}` does not exist (check the spelling; docs/config.md lists every key)")
        else:
            expected = " or ".join(dict.fromkeys(_describe_expected(x) for x in errs))
            lines.append(f"{source}: key `{loc}`: got {short_repr(err.get('input'))}: {expected}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] = (), values: dict | None = None,
                source: str | None = None) -> RunConfig:
    """Loads a YAML run config, applies `--set` overrides and validates it.

    Args:
        path: the YAML file. A `base:` key names another config (relative to
            this file) whose values this one overrides.
        overrides: `dotted.key=value` strings; values are parsed as YAML.
        values: `{"dotted.key": value}` applied after `overrides` (a sweep's trial parameters).
        source: what messages name (default: the file); e.g. the sweep's space file for its values.

    Returns:
        The validated `RunConfig`.

    Raises:
        ConfigError: with a message naming the file or dotted key and what was expected.
    """
    return validate(given_values(path, overrides, values, source), source or str(path))


def given_values(path: str | Path, overrides: list[str] = (), values: dict | None = None,
                 source: str | None = None) -> dict:
    """What a config file (with its `base:` chain), `--set` overrides and `values` say, before the schema adds its
    defaults: `load_config` without validation (a sweep's study is made from these, not from a version's defaults)."""
    path = Path(path)
    data = _read_yaml_file(path)
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(data, parts, value, f"--set {text}")
    for key, value in (values or {}).items():
        _apply_override(data, key.split("."), value, f"{source or path}: key `{key}`")
    return data


def validate(data: dict, source: str = "config") -> RunConfig:
    """Validates a config dict against the schema of its `task` (default `frames`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    task = data.get("task", "frames")
    if not isinstance(task, str) or task not in RUN_CONFIGS:  # a list or mapping cannot even be looked up
        raise ConfigError(f"{source}: key `task`: got {short_repr(task)}: expected one of {', '.join(map(repr, RUN_CONFIGS))}")
    try:
        return RUN_CONFIGS[task].model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
