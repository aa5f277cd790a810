"""Writes docs/config.md from the schema in training/config.py (run after changing a key).

    python scripts/gen_config_docs.py          # rewrite docs/config.md
    python scripts/gen_config_docs.py --check  # exit 1 if it is out of date (the tests run this)
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from training.config import RUN_CONFIGS, RunConfig

OUT = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is typing.Annotated:
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "section"
    return f"`{value!r}`" if value is not None else "null"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `training/config.py` by `python scripts/gen_config_docs.py`; do not edit by hand.",
        "",
        "A run is one YAML file. `base: other.yaml` (relative to the file) inherits another config;",
        "`reelml train CONFIG --set dotted.key=value` overrides any key; `--dry-run` prints the result.",
        "Unknown keys, wrong types and out-of-range values stop the run with the key's dotted name.",
        "YAML 1.2 scalars: `1e-3` is a number; only `true`/`false` are booleans (`no` is the string \"no\").",
        "",
    ]

    def section(model: type[BaseModel], prefix: str, title: str | None = None, only=None):
        rows, subsections = [], []
        for name, field in model.model_fields.items():
            if only is not None and name not in only:
                continue
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                subsections.append((annotation, f"{prefix}{name}"))
                continue
            why = (field.description or "").replace("|", "\\|")
            bounds = [f"{k} {getattr(m, k)}" for m in field.metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None]
            rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {why}"
                        + (f" ({', '.join(bounds)})" if bounds else "") + " |")
        title = title or f"`{prefix.rstrip('.')}`"
        lines.extend([f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], "",
                      "| key | type | default | why |", "| --- | --- | --- | --- |", *rows, ""])
        for sub, name in subsections:
            section(sub, f"{name}.")

    section(RunConfig, "", title="Every task: top level")
    for task, run in RUN_CONFIGS.items():
        lines.extend([f"# Task `{task}`", "", (run.__doc__ or "").strip(), ""])
        for name in run.model_fields:
            if name not in RunConfig.model_fields:
                section(run.model_fields[name].annotation, f"{name}.", title=f"`{name}` (task `{task}`)")
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_config_docs.py")
            sys.exit(1)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
