"""`reelml predict EXPORT INPUT... [--embed FILE] [--anomalies]`: anomaly scores of frames or feature rows.

Frames: image files, folders and sampled video frames; feature rows: .csv,
.parquet or .npy tables with the export's feature columns. One row per input
(`source, frame, timecode` or `source, row, id`, then `score, is_anomaly`);
`--embed` also writes every input's embedding to a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.autoencoder.tables import TABLE_EXTENSIONS, read_table
from training.tasks.video import add_frame_arguments, check_batch_size, check_sampling, frame_outputs

EMBED_EXTENSIONS = (".parquet", ".npy", ".csv")


def predict_arguments(parser) -> None:
    """Adds INPUT..., `--every-seconds`, `--every-frames`, `--batch-size`, `--embed` and `--anomalies` to `reelml predict`."""
    add_frame_arguments(parser, "frames: image files, folders of images, or video files; "
                        "feature-row autoencoders: .csv, .parquet or .npy tables")
    parser.add_argument("--embed", metavar="FILE", help="autoencoder: also write each input's embedding to FILE (.parquet, .npy or .csv)")
    parser.add_argument("--anomalies", action="store_true", help="autoencoder: list only the inputs flagged as anomalies, with their scores")


def predict_hint(cfg) -> str:
    """The arguments shown after `reelml predict EXPORT_DIR` once an autoencoder run has exported."""
    table = cfg.data.source in ("table", "sample_table")
    return ("ROWS.csv" if table else "FRAMES_OR_VIDEOS...") + " --anomalies [--embed embeddings.parquet]"


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them; table rows have their own)."""
    if "row" in row:
        return ["source", "row", "id", "score", "is_anomaly"]
    return ["source", "frame", "timecode", "score", "is_anomaly"]


def _check_embed_path(path):
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in EMBED_EXTENSIONS:
        raise UserError(f"--embed `{path}`: expected a {', '.join(EMBED_EXTENSIONS)} file name")
    if not path.resolve().parent.is_dir():
        raise UserError(f"--embed `{path}`: folder `{path.resolve().parent}` does not exist")
    return path


def write_embeddings(path: Path, sources: list[dict], embeddings: np.ndarray):
    """Writes one embedding per input.

    Args:
        path: `.npy` (the array; rows in the order of the predictions), or `.parquet` / `.csv`
            (the input's source columns, then `e0` ... `e{k-1}`).
        sources: each input's source columns.
        embeddings: float `[inputs, code_size]`.
    """
    if path.suffix.lower() == ".npy":
        np.save(path, embeddings.astype(np.float32))
        return
    import pandas as pd

    df = pd.DataFrame(sources)
    for j in range(embeddings.shape[1]):
        df[f"e{j}"] = embeddings[:, j]
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


def _frame_rows(loaded, inputs, report, want_embedding, **sampling):
    """(source dict, outputs of one input) for image files and sampled video frames."""
    classify_images, encode_images = loaded.signatures["is_anomaly"], loaded.signatures["encode"]
    analyse_pixels = loaded.signatures["analyse_pixels"]

    def run_images(blobs):
        out = {k: v.numpy() for k, v in classify_images(images=tf.constant(blobs)).items()}
        if want_embedding:
            out["embedding"] = encode_images(images=tf.constant(blobs))["embedding"].numpy()
        return out

    def run_pixels(pixels):
        return {k: v.numpy() for k, v in analyse_pixels(pixels=tf.constant(pixels)).items()}

    return frame_outputs(inputs, report, run_images, run_pixels, **sampling)


def _table_rows(loaded, metadata, inputs, batch_size, want_embedding):
    columns, id_column = metadata["feature_columns"], metadata.get("id_column")
    classify, encode = loaded.signatures["is_anomaly"], loaded.signatures["encode"]
    for raw in inputs:
        path = Path(raw)
        if path.suffix.lower() == ".npy":
            columns_here, id_here = [f"f{i}" for i in range(len(columns))], None
        else:
            columns_here, id_here = columns, id_column
        values, _, ids = read_table(path, columns_here, id_here, what="input")
        for start in range(0, len(values), batch_size):
            features = tf.constant(values[start:start + batch_size])
            out = {k: v.numpy() for k, v in classify(features=features).items()}
            if want_embedding:
                out["embedding"] = encode(features=features)["embedding"].numpy()
            for i in range(len(out["score"])):
                yield {"source": str(path), "row": start + i + 1, "id": ids[start + i]}, {k: v[i] for k, v in out.items()}


def predict(loaded, metadata, report, *, inputs, every_seconds=None, every_frames=None, batch_size=64, embed=None,
            anomalies=False):
    """Scores frames (image files, folders, video frames) or feature rows.

    Args:
        loaded: the export, as `tf.saved_model.load` returned it.
        metadata: its `reelml.json` (`input`: frames or table; a table's `feature_columns`, `id_column`).
        report: `report(path, reason)` for each unreadable file, which is skipped.
        inputs: frames: image files, folders, videos; rows: .csv, .parquet or .npy tables.
        every_seconds: video: one frame every this many seconds (default 1.0).
        every_frames: video: one frame every this many frames (instead of `every_seconds`).
        batch_size: inputs per call of the model.
        embed: also write every input's embedding to this file (.parquet, .npy or .csv).
        anomalies: yield only the inputs over the export's threshold.

    Yields:
        One dict per input (see `csv_fields`), with `score` and `is_anomaly`.

    Raises:
        UserError: no inputs, a bad flag value, a missing or malformed input, named.
    """
    check_batch_size(batch_size)
    embed_path = _check_embed_path(embed)
    kind = metadata.get("input")
    if not inputs:
        what = "feature table (.csv, .parquet, .npy)" if kind == "table" else "image file, folder of images or video"
        raise UserError(f"give at least one {what} to score")
    if kind == "table":
        for flag, value in (("--every-seconds", every_seconds), ("--every-frames", every_frames)):
            if value is not None:
                raise UserError(f"{flag}: this export scores feature rows, not video frames")
        for raw in inputs:
            if Path(raw).suffix.lower() not in TABLE_EXTENSIONS:
                raise UserError(f"input `{raw}`: this export scores feature rows; expected a {', '.join(TABLE_EXTENSIONS)} file")
        results = _table_rows(loaded, metadata, inputs, batch_size, embed_path is not None)
    else:
        check_sampling(every_seconds, every_frames)
        results = _frame_rows(loaded, inputs, report, embed_path is not None, batch_size=batch_size,
                              every_seconds=every_seconds, every_frames=every_frames)

    sources, embeddings, flagged, total, threshold = [], [], 0, 0, None
    for source, out in results:
        if embed_path is not None:
            sources.append(source)
            embeddings.append(out["embedding"])
        flag = bool(out["is_anomaly"])
        flagged, total, threshold = flagged + flag, total + 1, float(out["threshold"])
        if flag or not anomalies:
            yield {**source, "score": round(float(out["score"]), 6), "is_anomaly": flag}
    if total:
        print(f"{flagged} of {total} input(s) flagged as anomalies (score > threshold {threshold:.4g})", file=sys.stderr)
    if embed_path is not None:
        if embeddings:
            write_embeddings(embed_path, sources, np.stack(embeddings))
        print(f"{len(embeddings)} embedding(s) of size {metadata.get('code_size')} written to {embed_path}", file=sys.stderr)
