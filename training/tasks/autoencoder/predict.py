"""`reelml predict EXPORT INPUT... [--embed FILE] [--anomalies] [--events] [--shots ...]`: frame QC.

Frames: image files, folders and sampled video frames; feature rows: .csv,
.parquet or .npy tables with the export's feature columns. One row per input
(`source, frame, timecode, seconds` or `source, row, id`, then `score, is_anomaly`);
`--embed` also writes every input's embedding to a file. Videos, as QC operators read them:
`--events` turns each run of consecutive flagged sampled frames into one event (in and out
timecodes, the worst score); `--shots` gives one row per shot (the worst score of the frames
drawn in it, how many were flagged, and the shot's flag). Both write PySceneDetect's scene-list
columns, and EDL or OTIO with `-o *.edl` / `-o *.otio`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.autoencoder.tables import TABLE_EXTENSIONS, read_table
from training.tasks.shots import add_shot_arguments, check_shot_options, open_clock, range_row, shot_outputs
from training.tasks.timeline import SCENE_LIST_COLUMNS
from training.tasks.video import add_frame_arguments, check_batch_size, check_sampling, frame_outputs

EMBED_EXTENSIONS = (".parquet", ".npy", ".csv")


def predict_arguments(parser) -> None:
    """Adds INPUT..., `--every-seconds`, `--every-frames`, `--batch-size`, `--embed` and `--anomalies` to `reelml predict`."""
    add_frame_arguments(parser, "frames: image files, folders of images, or video files; "
                        "feature-row autoencoders: .csv, .parquet or .npy tables")
    parser.add_argument("--embed", metavar="FILE", help="autoencoder: also write each input's embedding to FILE (.parquet, .npy or .csv)")
    parser.add_argument("--anomalies", action="store_true", help="autoencoder: list only the inputs flagged as anomalies, with their scores")
    parser.add_argument("--events", action="store_true",
                        help="video: one row per QC event (a run of consecutive flagged frames), with in/out timecodes")
    add_shot_arguments(parser)


def predict_hint(cfg) -> str:
    """The arguments shown after `reelml predict EXPORT_DIR` once an autoencoder run has exported."""
    table = cfg.data.source in ("table", "sample_table")
    return ("ROWS.csv" if table else "FRAMES_OR_VIDEOS...") + " --anomalies [--embed embeddings.parquet]"


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them; table rows have their own)."""
    if "row" in row:
        return ["source", "row", "id", "score", "is_anomaly"]
    if "Scene Number" in row:
        return ["source", *SCENE_LIST_COLUMNS, "worst_score", "flagged_frames", "sampled_frames", "is_anomaly", "threshold"]
    return ["source", "frame", "timecode", "seconds", "score", "is_anomaly"]


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


def _pixel_runner(loaded):
    """Decoded frames (uint8 `[n, h, w, 3]`) -> the outputs of `analyse_pixels`, as numpy arrays."""
    analyse_pixels = loaded.signatures["analyse_pixels"]
    return lambda pixels: {k: v.numpy() for k, v in analyse_pixels(pixels=tf.constant(pixels)).items()}


def _frame_rows(loaded, inputs, report, want_embedding, **sampling):
    """(source dict, outputs of one input) for image files and sampled video frames."""
    classify_images, encode_images = loaded.signatures["is_anomaly"], loaded.signatures["encode"]

    def run_images(blobs):
        out = {k: v.numpy() for k, v in classify_images(images=tf.constant(blobs)).items()}
        if want_embedding:
            out["embedding"] = encode_images(images=tf.constant(blobs))["embedding"].numpy()
        return out

    return frame_outputs(inputs, report, run_images, _pixel_runner(loaded), **sampling)


def _video_qc(loaded, inputs, report, shots, new_detector, anomalies, *, batch_size, every_seconds, every_frames,
              frames_per_shot, min_shot_length, start_timecode):
    """`--shots` or `--events` rows of videos, and a one-line summary on stderr."""
    run_pixels = _pixel_runner(loaded)
    count, flagged = 0, 0
    if shots:
        if every_seconds is not None or every_frames is not None:
            raise UserError("--shots draws --frames-per-shot frames from each shot: drop --every-seconds / --every-frames")
        # the export's threshold (a variable of the SavedModel, returned with every score)
        threshold = float(run_pixels(np.zeros([1, 8, 8, 3], np.uint8))["threshold"][0])
        rows = (_qc_row(video, clock, s.number, s.start, s.end, s.frames, [float(x) for x in s.outputs.get("score", [])],
                        threshold)
                for video, clock, found in shot_outputs(inputs, report, run_pixels, detector=new_detector,
                                                        frames_per_shot=frames_per_shot, start_timecode=start_timecode)
                for s in found)
    else:
        rows = _events(frame_outputs(inputs, report, lambda blobs: {}, run_pixels, batch_size=batch_size,
                                     every_seconds=every_seconds, every_frames=every_frames, start_timecode=start_timecode),
                       lambda out: float(out["threshold"]), start_timecode, report)
    for row in rows:
        count, flagged = count + 1, flagged + bool(row["is_anomaly"])
        if row["is_anomaly"] or not anomalies or not shots:
            yield row
    what = "shot(s)" if shots else "QC event(s)"
    print(f"{count} {what}" + (f", {flagged} flagged" if shots else "") + " (frames over the export's threshold)",
          file=sys.stderr)


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


def _qc_row(video, clock, number, start, end, frames, scores, threshold):
    """A shot or QC event: the worst score of its sampled frames, how many were flagged, and its flag."""
    row = range_row(video, clock, number, start, end)
    flagged = int(sum(score > threshold for score in scores))
    worst = max(scores) if scores else None
    row.update(worst_score=round(float(worst), 6) if worst is not None else None, flagged_frames=flagged,
               sampled_frames=";".join(map(str, frames)), is_anomaly=flagged > 0, threshold=round(float(threshold), 6))
    note = (f"QC: {flagged} of {len(frames)} frames flagged, worst score {worst:.4g} > {threshold:.4g}" if flagged else
            f"ok: worst score {worst:.4g} <= {threshold:.4g}" if worst is not None else "no frame drawn")
    row["_event"].update(name="QC anomaly" if flagged else "ok", note=note, flagged=flagged > 0, worst_score=row["worst_score"],
                         flagged_frames=flagged)
    return row


def _events(rows, threshold_of, start_timecode, report):
    """Runs of consecutive flagged frames of each video -> one QC event row each (images are reported, and passed over)."""
    from itertools import groupby

    def videos_only(rows):
        for row in rows:
            if "frame" in row[0]:
                yield row
            else:
                report(row[0]["source"], "--events takes videos; an image has no timecodes")

    number = 0
    for video, frames in groupby(videos_only(rows), key=lambda r: r[0]["source"]):
        clock = open_clock(Path(video), start_timecode)
        for flagged, run in groupby(frames, key=lambda r: bool(r[1]["is_anomaly"])):
            run = list(run)
            if flagged:
                number += 1
                indices = [int(r[0]["frame"]) for r in run]
                yield _qc_row(video, clock, number, indices[0], indices[-1] + 1, indices,
                              [float(r[1]["score"]) for r in run], threshold_of(run[0][1]))


def predict(loaded, metadata, report, *, inputs, every_seconds=None, every_frames=None, batch_size=64, embed=None,
            anomalies=False, events=False, shots=False, frames_per_shot=3, detector="content", threshold=None,
            min_shot_length=15, start_timecode=None):
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
        anomalies: yield only the inputs over the export's threshold (with `shots`: only flagged shots).
        events: videos: one row per run of consecutive flagged sampled frames (in: the first flagged
            frame, out: the frame after the last one).
        shots: videos: one row per shot, from `frames_per_shot` frames drawn in it.
        frames_per_shot, detector, threshold, min_shot_length: `shots`: see `training.tasks.shots`.
        start_timecode: video: the first frame's timecode (None: the file's tag, else 00:00:00:00).

    Yields:
        One dict per input (see `csv_fields`), with `score` and `is_anomaly`; or per event or shot.

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
        new_detector = check_shot_options(shots, frames_per_shot, detector, threshold, min_shot_length)
        if shots and events:
            raise UserError("--shots and --events: give one of them (a row per shot, or per run of flagged frames)")
        if shots or events:
            if embed_path is not None:
                raise UserError(f"--embed: writes one embedding per frame; drop {'--shots' if shots else '--events'} to use it")
            yield from _video_qc(loaded, inputs, report, shots, new_detector, anomalies, batch_size=batch_size,
                                 every_seconds=every_seconds, every_frames=every_frames, frames_per_shot=frames_per_shot,
                                 min_shot_length=min_shot_length, start_timecode=start_timecode)
            return
        results = _frame_rows(loaded, inputs, report, embed_path is not None, batch_size=batch_size,
                              every_seconds=every_seconds, every_frames=every_frames, start_timecode=start_timecode)

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
