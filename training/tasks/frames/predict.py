"""`reelml predict EXPORT FRAMES... [--every-seconds S | --every-frames N] [--top-k K] [--batch-size B]`.

Classifies image files, folders of images and the sampled frames of videos;
one row per image or frame: `source, frame, timecode, label, confidence[, top_k]`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.video import add_frame_arguments, check_batch_size, check_sampling, frame_outputs


def predict_arguments(parser) -> None:
    """Adds FRAMES..., `--every-seconds`, `--every-frames`, `--batch-size` and `--top-k` to `reelml predict`."""
    add_frame_arguments(parser, "frames: image files, folders of images, or video files")
    parser.add_argument("--top-k", type=int, help="frames: also report the k most likely labels")


def predict_hint(cfg) -> str:
    """The arguments shown after `reelml predict EXPORT_DIR` once a frames run has exported."""
    return "FRAMES_OR_VIDEOS..."


def csv_fields(row) -> list[str]:
    """CSV columns of `reelml predict` (images and video frames share them)."""
    return ["source", "frame", "timecode", "label", "confidence"] + (["top_k"] if "top_k" in row else [])


def _row(source, output, class_names, top_k):
    row = dict(source)
    row["label"] = output["label"].decode()
    row["confidence"] = round(float(output["confidence"]), 6)
    if (top_k or 1) > 1:  # --top-k unset: the label only
        probabilities = output["probabilities"]
        best = np.argsort(-probabilities)[:top_k]
        row["top_k"] = ";".join(f"{class_names[j]}:{probabilities[j]:.4f}" for j in best)
    return row


def predict(loaded, metadata, report, *, inputs, every_seconds=None, every_frames=None, batch_size=64, top_k=None):
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

    Yields:
        One dict per image or sampled frame (see `csv_fields`).

    Raises:
        UserError: no inputs, a bad flag value or a missing path, named.
    """
    check_batch_size(batch_size)
    if not inputs:
        raise UserError("give at least one image file, folder of images or video to classify")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k}: expected 0 or more (the k likeliest labels beside the label)")
    check_sampling(every_seconds, every_frames)
    class_names = metadata["class_names"]
    classify_images, classify_pixels = loaded.signatures["serving_default"], loaded.signatures["classify_pixels"]

    def numpy(outputs):
        return {k: v.numpy() for k, v in outputs.items()}

    for source, output in frame_outputs(inputs, report, lambda blobs: numpy(classify_images(images=tf.constant(blobs))),
                                        lambda pixels: numpy(classify_pixels(pixels=tf.constant(pixels))),
                                        batch_size=batch_size, every_seconds=every_seconds, every_frames=every_frames):
        yield _row(source, output, class_names, top_k)
