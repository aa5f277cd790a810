"""`reelml predict EXPORT --user U [-k 10]`, `--users-file F`, `--similar-to ITEM`: the recommender's flags and rows.

Users are sent to the export's `recommend` signature and items to its
`similar_items`, `--batch-size` IDs per call. An unknown user gets the most
popular items (said on stderr); an unknown item is reported and skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tensorflow as tf

from training.errors import UserError


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the recommender's flags to `reelml predict`.

    Args:
        parser: the `reelml predict` parser (EXPORT_DIR, --output and --format are already there).
    """
    # Not an option: inputs after EXPORT_DIR are taken only so that they are refused in the recommender's words.
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--user", action="append", metavar="USER_ID", help="recommend to this user (repeatable)")
    parser.add_argument("--users-file", metavar="FILE", help="recommend to every user ID in FILE (one per line)")
    parser.add_argument("--similar-to", action="append", metavar="ITEM_ID", help="items similar to this one (repeatable)")
    parser.add_argument("-k", type=int, default=10, help="items per user or per item (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="user or item IDs per call of the model (default 64)")


def predict_hint(cfg) -> str:
    """The arguments shown after `reelml predict EXPORT_DIR` once a run has exported: one user's top 10."""
    return "--user USER_ID -k 10"


def _read_ids(path) -> list[str]:
    """The user IDs of `--users-file`: one per line; blank lines, `#` comments and a CSV header are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--users-file `{path}`: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--users-file `{path}`: not UTF-8 text ({e.reason} at byte {e.start}); expected one user ID "
                        "per line") from None
    except OSError as e:
        raise UserError(f"--users-file `{path}`: cannot be read ({e.strerror or e})") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if ids and ids[0].lower() in ("user_id", "user", "userid"):
        ids = ids[1:]  # a CSV column with its header
    if not ids:
        raise UserError(f"--users-file `{path}`: no user IDs in it (one per line)")
    return ids


def _id_bytes(value: str) -> bytes:
    """An ID from the command line as the export's bytes (bytes that are not UTF-8 arrive as surrogates: kept)."""
    return value.encode("utf-8", "surrogateescape")


def _shown(value: str) -> str:
    return _id_bytes(value).decode("utf-8", "replace")


def predict(loaded, metadata, report, *, inputs, user, users_file, similar_to, k, batch_size):
    """Recommendations for users (`--user`, `--users-file`) or similar items (`--similar-to`); one dict per result.

    Args:
        loaded: the export, as `tf.saved_model.load` returns it.
        metadata: the export's `assets.extra/reelml.json` (unused).
        report: called as `report(item_id, reason)` for an unknown `--similar-to` item, which is skipped.
        inputs: positional inputs after EXPORT_DIR; a recommender takes none.
        user: `--user` IDs, or None.
        users_file: `--users-file`, or None.
        similar_to: `--similar-to` item IDs, or None.
        k: `-k`, items per user or per item (more than the catalogue: the whole catalogue).
        batch_size: `--batch-size`, IDs per call of a signature.

    Yields:
        Per user, `{"user_id", "rank", "item_id", "title", "score", "known_user"}` for each of its top k unseen
        items; then per item, `{"similar_to", "rank", "item_id", "title", "similarity"}`.

    Raises:
        UserError: a bad flag value, positional inputs, or no user and no item given.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected at least 1 (inputs per call of the model)")
    if inputs:
        raise UserError(f"a recommender export takes --user, --users-file or --similar-to, not inputs ({inputs[0]!r} ...)")
    users = list(user or []) + (_read_ids(users_file) if users_file else [])
    similar = list(similar_to or [])
    if not users and not similar:
        raise UserError("give --user USER_ID, --users-file FILE or --similar-to ITEM_ID")
    if k < 1:
        raise UserError(f"-k {k}: expected at least 1")
    k = min(k, 2**31 - 1)  # the export returns at most the whole catalogue
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        out = loaded.signatures["recommend"](user_id=tf.constant([_id_bytes(u) for u in chunk]),
                                             k=tf.fill([len(chunk)], k))  # k per row
        ids, titles, scores = out["item_id"].numpy(), out["title"].numpy(), out["score"].numpy()
        for row, one in enumerate(chunk):
            known = bool(out["known_user"].numpy()[row])
            if not known:
                print(f"user {one}: unknown to the model; most popular items instead", file=sys.stderr)
            for rank, (item, title, score) in enumerate(zip(ids[row], titles[row], scores[row]), 1):
                if item:
                    yield {"user_id": _shown(one), "rank": rank, "item_id": item.decode(), "title": title.decode(),
                           "score": round(float(score), 6), "known_user": known}
    for start in range(0, len(similar), batch_size):
        chunk = similar[start:start + batch_size]
        out = loaded.signatures["similar_items"](item_id=tf.constant([_id_bytes(i) for i in chunk]),
                                                 k=tf.fill([len(chunk)], k))
        ids, titles, sims = out["item_id"].numpy(), out["title"].numpy(), out["similarity"].numpy()
        for row, query in enumerate(chunk):
            if not bool(out["known_item"].numpy()[row]):
                report(query, "unknown item ID")
                continue
            for rank, (item, title, sim) in enumerate(zip(ids[row], titles[row], sims[row]), 1):
                if item:
                    yield {"similar_to": _shown(query), "rank": rank, "item_id": item.decode(), "title": title.decode(),
                           "similarity": round(float(sim), 6)}
