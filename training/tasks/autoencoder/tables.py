"""Feature tables the autoencoder reads: CSV or Parquet with a header, or a 2-D .npy array -> float32 rows.

Used for training data (`data.path`, `data.test_path`) and for `reelml predict`
inputs; every problem names the file and, for a CSV, the line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.errors import UserError

TABLE_EXTENSIONS = (".csv", ".parquet", ".pq", ".npy")


def read_table(path, columns=None, id_column=None, what="data.path"):
    """Reads feature rows from a CSV or Parquet file (with a header) or a 2-D .npy array.

    Args:
        path: the file.
        columns: feature columns to use, in this order; None: every column but `id_column`.
        id_column: a column naming each row, returned apart (None: rows are numbered).
        what: how the user named this file, for error messages.

    Returns:
        `(features float32 [rows, columns], column names, row IDs as strings)`.

    Raises:
        UserError: a missing, unreadable or empty file, a missing column, a non-numeric, missing or infinite value.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} `{path}`: file not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise UserError(f"{what} `{path}`: expected a {', '.join(TABLE_EXTENSIONS)} file, got `{suffix or 'no extension'}`")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"{what} `{path}`: not a readable .npy array ({e})") from None
        if array.ndim != 2 or array.dtype.kind not in "fiub":
            raise UserError(f"{what} `{path}`: expected a 2-D numeric array (rows x features), got shape {array.shape} "
                            f"of {array.dtype}")
        names = [f"f{i}" for i in range(array.shape[1])]
        if columns is not None and list(columns) != names:
            raise UserError(f"{what} `{path}`: a .npy array has no column names; expected {len(columns)} features "
                            f"named by position, got {array.shape[1]}")
        values, ids = array.astype(np.float32), [str(i) for i in range(len(array))]
        where = None
    else:
        import pandas as pd

        try:
            df = pd.read_parquet(path) if suffix in (".parquet", ".pq") else pd.read_csv(path)
        except Exception as e:  # pandas and pyarrow raise many types for damaged files
            raise UserError(f"{what} `{path}`: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        where = _csv_line if suffix == ".csv" else (lambda _, row: f"row {row + 1}")
        if id_column is not None and id_column not in df.columns:
            raise UserError(f"{what} `{path}`: no column `{id_column}` (data.id_column); columns: {list(df.columns)[:20]}")
        names = list(columns) if columns is not None else [str(c) for c in df.columns if c != id_column]
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise UserError(f"{what} `{path}`: no column(s) {missing}; columns: {list(df.columns)[:20]}")
        for name in names:
            if not pd.api.types.is_numeric_dtype(df[name]):
                row, bad = next((i, v) for i, v in enumerate(df[name]) if not _is_number(v))
                raise UserError(f"{what} `{path}`: {where(path, row)}: column `{name}` holds non-numeric values, e.g. {bad!r} "
                                "(list the feature columns in data.columns, or name the ID column in data.id_column)")
        values = df[names].to_numpy(np.float32)
        ids = [str(v) for v in df[id_column]] if id_column else [str(i) for i in range(len(df))]
    if len(values) == 0:
        raise UserError(f"{what} `{path}`: no rows")
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    if len(bad_rows):
        line = f"{where(path, bad_rows[0])}: " if where is _csv_line else ""
        raise UserError(f"{what} `{path}`: {line}row {bad_rows[0] + 1}, column `{names[bad_cols[0]]}`: missing or infinite "
                        f"value (found in {len(set(bad_rows))} row(s))")
    return values, names, ids


def _csv_line(path, row):
    """`line N` of the `row`-th data row (0-based) of a CSV file: pandas skips blank lines, so count them back in.

    (A quoted value that spans lines would shift the count; feature tables hold none.)
    """
    seen = -1  # the header is the first line that is not blank
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                if seen == row:
                    return f"line {number}"
                seen += 1
    return f"row {row + 1}"


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
