"""`reelml predict EXPORT_DIR [INPUT... | --user U | --users-file F | --similar-to ITEM]`: run an export and
write one row per result as CSV or JSON lines.

The export is loaded with `tf.saved_model.load`, exactly as a server would; the
task recorded in its `assets.extra/reelml.json` decides how inputs are read.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from training.errors import UserError


def _writer(args):
    fmt = args.format or ("jsonl" if args.output and Path(args.output).suffix in (".jsonl", ".json") else "csv")
    if args.output:
        parent = Path(args.output).resolve().parent
        if not parent.is_dir():
            raise UserError(f"--output `{args.output}`: folder `{parent}` does not exist")
    return fmt


def predict(args, import_tensorflow) -> int:
    from training.export import read_metadata, resolve_export_dir

    export_dir = resolve_export_dir(args.export_dir)
    metadata = read_metadata(export_dir)
    fmt = _writer(args)
    import_tensorflow()  # only once the arguments are known to be good
    import tensorflow as tf

    from training.tasks import TASKS

    task = TASKS.get(metadata.get("task"))
    if task is None:
        raise UserError(f"`{export_dir}`: unknown task {metadata.get('task')!r} in its metadata")
    loaded = tf.saved_model.load(str(export_dir))

    skipped = []

    def report(path, reason):
        skipped.append(path)
        print(f"skipped {path}: {reason}", file=sys.stderr)

    rows = task.predict(loaded, metadata, args, report)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    count = 0
    try:
        writer = None
        for row in rows:
            if fmt == "jsonl":
                out.write(json.dumps(row) + "\n")
            else:
                if writer is None:
                    fields = task.csv_fields(row)
                    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(row)
            count += 1
    finally:
        if args.output:
            out.close()
    print(f"{count} prediction(s) from {export_dir}" + (f"; {len(skipped)} input(s) skipped" if skipped else ""), file=sys.stderr)
    if count == 0 and skipped:
        return 1
    return 0
