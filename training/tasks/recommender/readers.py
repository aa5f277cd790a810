"""Interaction logs as they come: MovieLens files, any CSV or Parquet with a column mapping, titles, tfds `movielens/*`.

Every reader returns a `Log` (one entry per row, IDs as strings); a malformed
row is a `UserError` naming the file and its line (or row, for Parquet).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from training.errors import UserError
from training.tasks.tfds_source import open_builder, tfds_errors

_MOVIELENS_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclasses.dataclass
class Log:
    """Interactions as read from the source: one entry per row, IDs as strings."""

    users: np.ndarray  # str
    items: np.ndarray  # str
    rating: np.ndarray | None = None  # float64
    timestamp: np.ndarray | None = None  # float64
    weight: np.ndarray | None = None  # float64
    titles: dict | None = None  # item ID -> title


def detect_format(path: Path) -> str:
    """`auto`: the MovieLens layouts by their file names, Parquet by extension, else a CSV with `data.columns`."""
    name = path.name.lower()
    if name == "u.data" or name.endswith(".data"):
        return "movielens_100k"
    if name.endswith(".dat"):
        return "movielens_1m"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
        if "userId" in header and "movieId" in header:
            return "movielens_latest"
    return "csv"


def _parser_error(path, e):
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
    if match:
        want, line, saw = match.groups()
        return UserError(f"{path}: line {line}: malformed row, expected {want} fields, found {saw}")
    return UserError(f"{path}: cannot be parsed ({str(e).splitlines()[0][:200]})")


def _read_table(path: Path, sep: str, header: bool, names=None, encoding="utf-8"):
    """A text table as strings; returns (DataFrame, line number of the first data row)."""
    import pandas as pd

    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (expected one interaction per line)")
    try:
        df = pd.read_csv(
            path, sep=sep, header=0 if header else None, names=names, index_col=False, dtype=str, keep_default_na=False,
            skip_blank_lines=False, engine="c" if len(sep) == 1 else "python", encoding=encoding, quoting=3 if not header else 0,
        )
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty (expected one interaction per line)") from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, e) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not {encoding} text ({e.reason} at byte {e.start})") from None
    missing = df.isna().to_numpy()  # the python parser (a separator of several characters) leaves missing fields NaN
    df = df.fillna("")
    blank = (df == "").all(axis=1)
    first = 2 if header else 1
    if header:
        _check_short_rows(path, df, blank, missing, sep, encoding, first)
    return df[~blank], first


def _check_short_rows(path, df, blank, missing, sep, encoding, first):
    """A row with fewer fields than the header is malformed, whichever column it lacks.

    pandas fills the missing fields in silently; the C parser with "", which an empty last field also gives:
    only if some row's last field is empty are the rows counted again, with the csv module.
    """
    import csv

    n = df.shape[1]
    header = ", ".join(map(str, df.columns))
    short = missing.any(axis=1) & ~missing.all(axis=1)
    if short.any():
        row = int(np.argmax(short))
        raise UserError(f"{path}: line {int(df.index[row]) + first}: malformed row, expected {n} fields ({header}), "
                        f"found {int((~missing[row]).sum())}")
    if len(sep) > 1 or not ((df.iloc[:, -1] == "") & ~blank).any():
        return
    with open(path, newline="", encoding=encoding, errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        next(reader, None)
        for row in reader:
            if row and any(field.strip() for field in row) and len(row) < n:
                raise UserError(f"{path}: line {reader.line_num}: malformed row, expected {n} fields ({header}), "
                                f"found {len(row)}")


def _column(df, path, name, first_line, numeric, where="line"):
    """One column as str or float64; the first empty or non-numeric value is reported by line."""
    import pandas as pd

    raw = df[name]
    if numeric:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
    else:
        values = raw.astype(str).str.strip().to_numpy()
        bad = values == ""
    if bad.any():
        row = int(np.argmax(bad))
        line = int(df.index[row]) + first_line
        got = raw.iloc[row]
        expected = "a number" if numeric else "an ID"
        raise UserError(f"{path}: {where} {line}: malformed row, column `{name}` is {got!r}, expected {expected}")
    return values


def read_interactions(path, fmt="auto", columns=None, delimiter=",") -> Log:
    """Reads an interactions file into a `Log`; malformed rows raise `UserError` naming file and line.

    Args:
        path: MovieLens `u.data` (tab-separated), `ratings.dat` (`::`), `ratings.csv`
            (with header), or any CSV or Parquet file.
        fmt: one of `data.format`'s values.
        columns: the `data.columns` section (for `csv` and `parquet`).
        delimiter: field separator of a `csv` file.

    Returns:
        A `Log`, one entry per row (ratings, timestamps and weights where mapped).
    """
    from training.config import Columns

    path, columns = Path(path), columns or Columns()
    if not path.exists():
        raise UserError(f"data.path `{path}`: file not found")
    if path.is_dir():
        raise UserError(f"data.path `{path}`: expected a file of interactions, found a folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("movielens_100k", "movielens_1m"):
        sep = "\t" if fmt == "movielens_100k" else "::"
        df, first = _read_table(path, sep, header=False, encoding="latin-1")
        if df.shape[1] > 4:  # the first line had more fields: the parser took its width
            extra = (df.iloc[:, 4:] != "").any(axis=1).to_numpy()
            raise UserError(f"{path}: line {int(df.index[int(np.argmax(extra))]) + first}: malformed row, expected 4 fields "
                            f"(user, item, rating, timestamp) separated by {sep!r}, found more")
        df = df.reindex(columns=range(4), fill_value="")
        df.columns = list(_MOVIELENS_COLUMNS)
        short = (df == "").any(axis=1).to_numpy()
        if short.any():
            line = int(df.index[int(np.argmax(short))]) + first
            raise UserError(f"{path}: line {line}: malformed row, expected 4 fields (user, item, rating, timestamp) "
                            f"separated by {sep!r}")
        mapping = dict(zip(("user", "item", "rating", "timestamp"), _MOVIELENS_COLUMNS))
        where = "line"
    elif fmt in ("csv", "movielens_latest"):
        sep = "\t" if delimiter in ("\\t", "tab") else delimiter
        df, first = _read_table(path, sep, header=True)
        if fmt == "movielens_latest":
            mapping = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        else:
            mapping = {k: getattr(columns, k) for k in ("user", "item", "rating", "timestamp", "weight") if getattr(columns, k)}
        where = "line"
    elif fmt == "parquet":
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})") from None
        df = df.reset_index(drop=True)
        first = 1
        mapping = {k: getattr(columns, k) for k in ("user", "item", "rating", "timestamp", "weight") if getattr(columns, k)}
        where = "row"
    else:
        raise AssertionError(fmt)

    missing = [f"`{c}` (data.columns.{k})" for k, c in mapping.items() if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)}; the file has columns {list(map(str, df.columns))}")
    if len(df) == 0:
        raise UserError(f"{path}: no interactions in the file (only a header or blank lines)")
    if fmt == "parquet":
        df = df[list(mapping.values())]
        df = df.astype({mapping[k]: str for k in ("user", "item")}).replace({"None": "", "nan": ""})
    def get(key, numeric):
        return _column(df, path, mapping[key], first, numeric, where) if key in mapping else None

    return Log(users=get("user", False), items=get("item", False), rating=get("rating", True),
               timestamp=get("timestamp", True), weight=get("weight", True))


def read_titles(path, columns) -> dict:
    """Item ID -> title, from MovieLens `u.item` (latin-1, `|`), `movies.dat` (latin-1, `::`), or a CSV/Parquet.

    Args:
        path: the titles file (`data.items_path`).
        columns: the `data.columns` section: `item` and `title` name a CSV's or Parquet's columns.

    Returns:
        `{item ID: title}`.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.items_path `{path}`: file not found")
    name = path.name.lower()
    if name == "u.item" or name.endswith(".item") or name.endswith(".dat"):
        sep = "|" if not name.endswith(".dat") else "::"
        titles = {}
        with open(path, encoding="latin-1") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split(sep)
                if len(fields) < 2:
                    raise UserError(f"{path}: line {line_no}: malformed row, expected an ID and a title separated by {sep!r}")
                titles[fields[0].strip()] = fields[1].strip()
        return titles
    df = pd.read_parquet(path) if name.endswith((".parquet", ".pq")) else pd.read_csv(path, dtype=str, keep_default_na=False)
    id_col = columns.item if columns.item in df.columns else ("movieId" if "movieId" in df.columns else df.columns[0])
    title_col = columns.title if columns.title in df.columns else df.columns[1]
    return dict(zip(df[id_col].astype(str).str.strip(), df[title_col].astype(str)))


def read_tfds(d) -> Log:
    """Reads a tfds MovieLens ratings dataset (`data.tfds_name`) into a `Log`, with titles when it has them.

    Args:
        d: the `data` section of the config (`tfds_name`, `tfds_data_dir`, `tfds_download`).

    Returns:
        A `Log` of its train split.
    """
    with tfds_errors(d):
        builder = open_builder(d)
        features = builder.info.features
        if "user_id" not in features or "movie_id" not in features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: expected MovieLens ratings (user_id, movie_id), found {list(features)}")
        ds = builder.as_dataset(split="train", shuffle_files=False)
    keys = [k for k in ("user_id", "movie_id", "user_rating", "timestamp", "movie_title") if k in features]
    parts = {k: [] for k in keys}
    for batch in ds.map(lambda e: {k: e[k] for k in keys}).batch(65536).as_numpy_iterator():
        for k in keys:
            parts[k].append(batch[k])
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    if not cols or len(cols["user_id"]) == 0:
        raise UserError(f"data.tfds_name `{d.tfds_name}`: no ratings in its train split")
    def text(values):
        return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in values], dtype=object)

    items = text(cols["movie_id"])
    titles = dict(zip(items, text(cols["movie_title"]))) if "movie_title" in cols else None
    return Log(users=text(cols["user_id"]), items=items,
               rating=cols["user_rating"].astype(np.float64) if "user_rating" in cols else None,
               timestamp=cols["timestamp"].astype(np.float64) if "timestamp" in cols else None, titles=titles)
