"""`reelml predict EXPORT_DIR [INPUT... | --user U | --users-file F | --similar-to ITEM]`: run an export and
write one row per result as CSV or JSON lines.

The export is loaded with `tf.saved_model.load`, exactly as a server would; the
task recorded in its `assets.extra/reelml.json` decides how inputs are read.
A damaged export (a truncated `saved_model.pb`, a missing or truncated
variables file) is a user error naming the file, as is an option that the
export's task does not take.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import threading
import json
import logging
import re
import sys
from pathlib import Path

from training.errors import UserError

class _TaskParser(argparse.ArgumentParser):
    """The parser of one task's `reelml predict` flags; it remembers them, to name the task a stray flag belongs to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.flags: set[str] = set()

    def add_argument(self, *names, **kwargs):
        self.flags.update(n for n in names if n.startswith("-"))
        return super().add_argument(*names, **kwargs)


def task_parser(task, prog: str) -> _TaskParser:
    """The whole `reelml predict` parser for one task: the shared output flags and the task's own."""
    from training.cli import add_output_arguments

    parser = _TaskParser(prog=prog, add_help=False, description=f"Run a {task.name} export; one row per result.")
    add_output_arguments(parser)
    task.predict_arguments(parser)
    return parser


def _a(task_name: str) -> str:
    return f"{'an' if task_name[0] in 'aeiou' else 'a'} {task_name}"


def _task_options(task, args, rest: list[str], export_dir: Path) -> dict:
    """The values of the task's own flags, by name; a flag of another task (or of none) is a user error."""
    from training.tasks import TASKS

    parser = task_parser(task, f"reelml predict {export_dir}")
    options, unknown = parser.parse_known_args(rest)
    for token in unknown:
        flag = token.split("=", 1)[0]
        if not flag.startswith("-"):
            raise UserError(f"`{token}`: {_a(task.name)} export (`{export_dir}`) takes no such input; "
                            f"`reelml predict {export_dir} --help` lists what it takes")
        owners = [name for name, other in TASKS.items() if flag in task_parser(other, "").flags]
        where = f"it is for {' and '.join(owners)} exports" if owners else f"`reelml predict {export_dir} --help` lists its flags"
        raise UserError(f"{flag}: not an option of {_a(task.name)} export (`{export_dir}`); {where}")
    shared = {"help", "output", "format"}
    return {k: v for k, v in vars(options).items() if k not in shared}


TIMELINE_SUFFIXES = {".edl": "edl", ".otio": "otio"}


def _writer(args):
    suffix = Path(args.output).suffix.lower() if args.output else ""
    fmt = args.format or ("jsonl" if suffix in (".jsonl", ".json") else TIMELINE_SUFFIXES.get(suffix, "csv"))
    if fmt in ("edl", "otio") and not args.output:
        raise UserError(f"--format {fmt}: give the file to write with --output (e.g. -o shots.{fmt})")
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            raise UserError(f"--output `{args.output}`: is a folder; give a file name (e.g. {target / 'predictions.csv'})")
        parent = target.resolve().parent
        if not parent.is_dir():
            raise UserError(f"--output `{args.output}`: folder `{parent}` does not exist")
    return fmt


def _other_versions(export_dir: Path) -> str:
    from training.export import versions

    others = [v for v in versions(export_dir.parent) if str(v) != export_dir.name]
    return f" (other versions beside it: {', '.join(map(str, others))})" if others else ""


def _variables_files(export_dir: Path) -> tuple[Path, list[Path]]:
    variables = export_dir / "variables"
    return variables / "variables.index", sorted(variables.glob("variables.data-*"))


def _check_complete(export_dir: Path):
    """The files every reelml export has: `saved_model.pb`, `variables/variables.index` and its data shards."""
    again = "re-export it (reelml export CONFIG) or use another version" + _other_versions(export_dir)
    pb = export_dir / "saved_model.pb"
    if not pb.is_file():
        raise UserError(f"`{pb}`: missing; the export is incomplete: {again}")
    index, data = _variables_files(export_dir)
    if not index.is_file():
        raise UserError(f"`{index}`: missing; the export's variables cannot be read: {again}")
    if not data:
        raise UserError(f"`{index.parent / 'variables.data-00000-of-00001'}`: missing (no variables.data-* file beside "
                        f"variables.index); the export's variables cannot be read: {again}")
    match = re.fullmatch(r"variables\.data-\d+-of-(\d+)", data[0].name)
    if match:
        for shard in range(int(match.group(1))):
            name = index.parent / f"variables.data-{shard:05d}-of-{match.group(1)}"
            if not name.is_file():
                raise UserError(f"`{name}`: missing; the export's variables cannot be read: {again}")


def _damage(export_dir: Path, error: Exception) -> str:
    """Which file of an export TensorFlow could not read, from its error."""
    text = f"{type(error).__name__}: {error}"
    first = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]", "", str(error))  # TF's words for where, not what
    first = " ".join(first.split())[:240]
    if "0 MetaGraphs" in text:  # TF's words for an empty saved_model.pb (it asks for `tags=`)
        first = "it holds no MetaGraph"
    pb = export_dir / "saved_model.pb"
    index, data = _variables_files(export_dir)
    again = "re-export it (reelml export CONFIG) or use another version" + _other_versions(export_dir)

    def damaged(path):
        return f"`{path}`: truncated or damaged, TensorFlow cannot read it ({first}); {again}"

    if "saved_model.pb" in text or "MetaGraph" in text or "Error parsing message" in text:
        return damaged(pb)
    shard = re.search(r"shard (\d+)", text)
    if shard:
        named = [p for p in data if p.name.startswith(f"variables.data-{int(shard.group(1)):05d}-")]
        if named:
            return damaged(named[0])
    for path in data + [index]:
        if str(path) in text or f"variables/{path.name}" in text:
            return damaged(path)
    if "sstable" in text or "TensorSliceReader" in text or "variables.index" in text:
        return damaged(index)
    if isinstance(error, IndexError) or re.search(r"Read less bytes|Checksum|DataLoss|OUT_OF_RANGE|RestoreV2", text):
        return damaged(data[0] if len(data) == 1 else "`, `".join(map(str, data)))
    return f"`{export_dir}`: cannot be loaded as a SavedModel ({first}); {again}"


@contextlib.contextmanager
def _quiet_fingerprint(export_dir: Path):
    """TF logs a traceback when `fingerprint.pb` is damaged, and loads on: say it in one line instead."""
    seen = []

    class Drop(logging.Filter):
        def filter(self, record):
            if "Fingerprint" in str(record.msg):
                seen.append(record)
                return False
            return True

    drop = Drop()
    loggers = [logging.getLogger("absl"), logging.getLogger("tensorflow")]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
        if seen:
            print(f"warning: `{export_dir / 'fingerprint.pb'}`: damaged, ignored (the model itself loaded)", file=sys.stderr)


def load_export(export_dir: Path, tf):
    """`tf.saved_model.load`, with a damaged or incomplete export reported as a `UserError` naming the file."""
    _check_complete(export_dir)
    try:
        with _quiet_fingerprint(export_dir):
            return tf.saved_model.load(str(export_dir))
    except Exception as e:  # TF raises OSError, ValueError, IndexError, OpError ... for damaged files
        raise UserError(_damage(export_dir, e)) from None


def _check_signatures(loaded, metadata, export_dir: Path):
    missing = [name for name in metadata.get("signatures", {}) if name not in loaded.signatures]
    if missing:
        raise UserError(f"`{export_dir / 'saved_model.pb'}`: has no signature {', '.join(map(repr, missing))}, which its "
                        f"assets.extra/reelml.json lists; saved_model.pb and reelml.json come from different exports")


def _print_general_help():
    print("usage: reelml predict EXPORT_DIR [-o OUT.csv|OUT.jsonl] [--format csv|jsonl] [TASK FLAGS ...]\n\n"
          "Runs an export and writes one row per result. The flags after EXPORT_DIR are those of the export's task:\n"
          "  reelml predict EXPORT_DIR --help    lists them")


def predict(args, rest: list[str], import_tensorflow) -> int:
    """`reelml predict`: `args` holds EXPORT_DIR and the output flags, `rest` the task's flags and inputs."""
    from training.export import read_metadata, resolve_export_dir

    if args.export_dir is None:
        if args.help:
            _print_general_help()
            return 0
        raise UserError("expected EXPORT_DIR: exports/<name> (newest version) or exports/<name>/<version>")
    if args.export_dir.startswith("models:/"):  # a registered version: its downloaded export, then as any export
        from training import mlflow_model, tracking

        args.export_dir = str(mlflow_model.resolve_model_uri(args.export_dir, tracking.resolve_uri(None)))
    given = Path(args.export_dir)
    if not (given / "saved_model.pb").exists() and ((given / "variables").is_dir() or (given / "assets.extra").is_dir()):
        _check_complete(given)  # a version folder without its saved_model.pb: name the file, not "not an export"
    export_dir = resolve_export_dir(given)
    _check_complete(export_dir)  # before the metadata: an empty or half-copied version folder says so
    metadata = read_metadata(export_dir)
    import_tensorflow()  # the task's flags are known once its module is loaded
    import tensorflow as tf

    from training.tasks import TASKS

    task_name = metadata.get("task")
    if task_name not in TASKS:
        raise UserError(f"`{export_dir}`: unknown task {task_name!r} in its metadata (expected one of {', '.join(TASKS)})")
    task = TASKS[task_name]
    if args.help:
        task_parser(task, f"reelml predict {export_dir}").print_help()
        return 0
    options = _task_options(task, args, rest, export_dir)
    fmt = _writer(args)
    loaded = load_export(export_dir, tf)
    _check_signatures(loaded, metadata, export_dir)

    skipped = []

    def report(path, reason):
        skipped.append(path)
        print(f"skipped {path}: {reason}", file=sys.stderr)

    from training.predict_many import MANY_OPTIONS, default_jobs, predict_many, several_videos

    if any(options.get(k) is not None for k in MANY_OPTIONS) or (default_jobs() > 1 and several_videos(options.get("inputs"))):
        return predict_many(task, loaded, metadata, options, args, fmt, export_dir)
    options = {k: v for k, v in options.items() if k not in MANY_OPTIONS}
    rows = task.predict(loaded, metadata, report, **options)
    count = write_rows(rows, Path(args.output) if args.output else None, fmt, task, export_dir, skipped)
    where = f" written to {args.output}" if args.output else ""
    print(f"{count} {'event' if fmt in ('edl', 'otio') else 'prediction'}(s) from {export_dir}{where}" +
          (f"; {len(skipped)} input(s) skipped" if skipped else ""), file=sys.stderr)
    return 0


def write_rows(rows, target: Path | None, fmt: str, task, export_dir: Path, skipped: list) -> int:
    """Writes the rows of a prediction to `target` (None: stdout) as CSV, JSON lines, EDL or OTIO; returns how many.

    A file is written beside its name and renamed into place when complete (opened with the first
    row: an error before it leaves nothing behind), so a crash or a kill never leaves half a file
    under the name: a re-run over a list of inputs can trust the files that are there.

    Raises:
        UserError: no input could be read, the file cannot be written, or EDL/OTIO without shots or events.
    """
    if fmt in ("edl", "otio"):
        return _write_timeline(target, rows, skipped, export_dir, fmt)
    out, temp, count, writer = None, None, 0, None

    def open_output():
        nonlocal temp
        if target is None:
            return sys.stdout
        temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            return open(temp, "w", newline="")
        except OSError as e:
            raise UserError(f"--output `{target}`: cannot be written ({e.strerror or e})") from None

    try:
        for row in rows:
            row = {k: v for k, v in row.items() if not k.startswith("_")}  # `_event`: for EDL and OTIO only
            if out is None:
                out = open_output()
            if fmt == "jsonl":
                out.write(json.dumps(row) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=task.csv_fields(row), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(row)
            count += 1
        if count == 0 and skipped:
            raise UserError(f"none of the {len(skipped)} input(s) could be read (each is named above); nothing predicted")
        if out is None:
            out = open_output()  # no results (e.g. no anomalies): an empty file
        if temp is not None:
            out.close()
            os.replace(temp, target)
            temp = None
    finally:
        if temp is not None:  # failed part-way: nothing under the name
            out.close()
            Path(temp).unlink(missing_ok=True)
    return count


def _write_timeline(target: Path | None, rows, skipped, export_dir: Path, fmt: str) -> int:
    """`-o *.edl` / `-o *.otio`: the shots or QC events as one timeline, written once they are all known."""
    from training.tasks.timeline import write_timeline

    events = []
    for row in rows:
        if "_event" not in row:
            raise UserError(f"--output `{target}`: an {fmt.upper()} holds shots or QC events; "
                            "add --shots (or --events for an autoencoder export)")
        events.append(row["_event"])
    if not events and skipped:
        raise UserError(f"none of the {len(skipped)} input(s) could be read (each is named above); nothing predicted")
    write_timeline(target, events, title=f"reelml {export_dir.parent.name} {export_dir.name}")
    return len(events)
