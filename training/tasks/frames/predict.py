"""`reelml predict EXPORT FRAMES... [--every-seconds S | --every-frames N] [--top-k K] [--shots ...]`.

Classifies image files, folders of images and the sampled frames of videos;
one row per image or frame: `source, frame, timecode, seconds, label, confidence[, top_k]`.
With `--shots`, one row per shot of each video: PySceneDetect's scene-list columns, then the label
and confidence (the mean of the probabilities of the frames drawn in the shot) and the runner-up.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.shots import add_shot_arguments, check_shot_options, range_row, shot_outputs
from training.tasks.timeline import SCENE_LIST_COLUMNS
from training.tasks.video import add_frame_arguments, check_batch_size, check_sampling, frame_outputs

SHOT_COLUMNS = ["label", "confidence", "runner_up", "runner_up_confidence", "sampled_frames"]


def predict_arguments(parser) -> None:
    """Adds FRAMES..., `--every-seconds`, `--every-frames`, `--batch-size` and `--top-k` to `reelml predict`."""
    add_frame_arguments(parser, "frames: image files, folders of images, or video files")
    parser.add_argument("--top-k", type=int, help="frames: also report the k most likely labels")
    add_shot_arguments(parser)


def predict_hint(cfg) -> str:
    """The arguments shown after `reelml predict EXPORT_DIR` once a frames run has exported."""
    return "FRAMES_OR_VIDEOS..."


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them; shots have their own)."""
    if "Scene Number" in row:
        return ["source", *SCENE_LIST_COLUMNS, *SHOT_COLUMNS]
    return ["source", "frame", "timecode", "seconds", "label", "confidence"] + (["top_k"] if "top_k" in row else [])


def _row(source, output, class_names, top_k):
    row = dict(source)
    row["label"] = output["label"].decode()
    row["confidence"] = round(float(output["confidence"]), 6)
    if (top_k or 1) > 1:  # --top-k unset: the label only
        probabilities = output["probabilities"]
        best = np.argsort(-probabilities)[:top_k]
        row["top_k"] = ";".join(f"{class_names[j]}:{probabilities[j]:.4f}" for j in best)
    return row


def _shot_row(video, clock, shot, class_names):
    row = range_row(video, clock, shot.number, shot.start, shot.end)
    row["sampled_frames"] = ";".join(map(str, shot.frames))
    if not shot.frames:  # a last shot shorter than the sampling stride
        row.update(label="", confidence=None, runner_up="", runner_up_confidence=None)
        note = "no frame drawn"
    else:
        mean = shot.outputs["probabilities"].mean(axis=0)
        best, second = (np.argsort(-mean)[:2].tolist() + [None])[:2]
        row.update(label=class_names[best], confidence=round(float(mean[best]), 6),
                   runner_up=class_names[second] if second is not None else "",
                   runner_up_confidence=round(float(mean[second]), 6) if second is not None else None)
        note = f"{row['label']} {row['confidence']:.2f}" + (f", runner-up {row['runner_up']} {row['runner_up_confidence']:.2f}"
                                                            if second is not None else "")
    row["_event"].update(name=row["label"] or f"shot {shot.number}", note=note, flagged=False, shot=shot.number,
                         label=row["label"], confidence=row["confidence"])
    return row


def predict(loaded, metadata, report, *, inputs, every_seconds=None, every_frames=None, batch_size=64, top_k=None,
            shots=False, frames_per_shot=3, detector="content", threshold=None, min_shot_length=15, start_timecode=None):
    """Classifies image files, folders and video frames.

    Args:
        loaded: the export, as `tf.saved_model.load` returned it.
        metadata: its `reelml.json` (`class_names`).
        report: `report(path, reason)` for each unreadable file, which is skipped.
        inputs: image files, folders of images and videos.
        every_seconds: video: one frame every this many seconds (default 1.0).
        every_frames: video: one frame every this many frames (instead of `every_seconds`).
        batch_size: frames per call of the model.
        top_k: also list the k likeliest labels (None, 0 or 1: the label only).
        shots: one row per shot of each video instead of one per sampled frame.
        frames_per_shot: `shots`: frames drawn per shot.
        detector: `shots`: PySceneDetect's detector by name (`training.tasks.shots.DETECTORS`).
        threshold: `shots`: the detector's threshold (None: its default).
        min_shot_length: `shots`: the shortest shot, in frames.
        start_timecode: video: the first frame's timecode (None: the file's tag, else 00:00:00:00).

    Yields:
        One dict per image or sampled frame, or per shot (see `csv_fields`).

    Raises:
        UserError: no inputs, a bad flag value or a missing path, named.
    """
    check_batch_size(batch_size)
    if not inputs:
        raise UserError("give at least one image file, folder of images or video to classify")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k}: expected 0 or more (the k likeliest labels beside the label)")
    check_sampling(every_seconds, every_frames)
    new_detector = check_shot_options(shots, frames_per_shot, detector, threshold, min_shot_length)
    class_names = metadata["class_names"]
    classify_images, classify_pixels = loaded.signatures["serving_default"], loaded.signatures["classify_pixels"]

    def numpy(outputs):
        return {k: v.numpy() for k, v in outputs.items()}

    if shots:
        if every_seconds is not None or every_frames is not None:
            raise UserError("--shots draws --frames-per-shot frames from each shot: drop --every-seconds / --every-frames")
        for video, clock, found in shot_outputs(inputs, report, lambda pixels: numpy(classify_pixels(pixels=tf.constant(pixels))),
                                                detector=new_detector, frames_per_shot=frames_per_shot,
                                                start_timecode=start_timecode):
            for shot in found:
                yield _shot_row(video, clock, shot, class_names)
        return
    for source, output in frame_outputs(inputs, report, lambda blobs: numpy(classify_images(images=tf.constant(blobs))),
                                        lambda pixels: numpy(classify_pixels(pixels=tf.constant(pixels))),
                                        batch_size=batch_size, every_seconds=every_seconds, every_frames=every_frames,
                                        start_timecode=start_timecode):
        yield _row(source, output, class_names, top_k)
