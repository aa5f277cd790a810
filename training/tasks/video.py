"""Frames for `reelml predict`: image files, folders and videos, sampled and batched through an export.

Shared by the frames and autoencoder tasks: which inputs a command line names
(`expand_inputs`), which frames of a video are taken (`video_frames`, with
SMPTE timecodes from `training.tasks.timecode`), the checks of the flags that say so, and the loop that runs an
export's signatures over them in batches, skipping unreadable files
(`frame_outputs`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


def check_batch_size(batch_size: int) -> None:
    """Raises a `UserError` naming `--batch-size` unless it is at least 1."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected at least 1 (inputs per call of the model)")


def check_sampling(every_seconds: float | None, every_frames: int | None) -> None:
    """Raises a `UserError` naming the flag unless `--every-seconds` / `--every-frames` are one valid choice."""
    if every_seconds is not None and every_frames is not None:
        raise UserError("--every-seconds and --every-frames: give one of them, not both")
    if every_seconds is not None and not (math.isfinite(every_seconds) and every_seconds > 0):
        raise UserError(f"--every-seconds must be > 0 and --every-frames >= 1 (got --every-seconds {every_seconds})")
    if every_frames is not None and every_frames < 1:
        raise UserError(f"--every-seconds must be > 0 and --every-frames >= 1 (got --every-frames {every_frames})")


def expand_inputs(inputs, report):
    """Files and folders -> `(images, videos)`, in a stable order.

    Args:
        inputs: paths as the user gave them.
        report: `report(path, reason)`, called for a folder without images or videos (it is skipped).

    Returns:
        `(image paths, video paths)`; a file given by name counts as an image whatever its extension.

    Raises:
        UserError: a path does not exist.
    """
    images, videos = [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"input `{raw}`: no such file or folder")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found = 0
        for p in candidates:
            suffix = p.suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                videos.append(p)
            elif suffix in IMAGE_EXTENSIONS or not path.is_dir():
                images.append(p)
            else:
                continue
            found += 1
        if not found:
            report(path, f"no image ({', '.join(IMAGE_EXTENSIONS)}) or video ({', '.join(VIDEO_EXTENSIONS)}) files in the folder")
    return images, videos


# Progress of the videos decoded in a thread: `reelml predict` over several files gives each worker thread a
# hook that draws that file's bar (training/predict_many.py); without one, nothing is drawn.
_progress = threading.local()


@contextlib.contextmanager
def progress_hook(hook):
    """Within the block, videos decoded in this thread call `hook(path, frames decoded, frames in the video or 0)`."""
    before = getattr(_progress, "hook", None)
    _progress.hook = hook
    try:
        yield
    finally:
        _progress.hook = before


def current_progress_hook():
    """This thread's hook (see `progress_hook`), or one that does nothing."""
    return getattr(_progress, "hook", None) or (lambda path, done, total: None)


def video_frames(path, every_seconds: float | None, every_frames: int | None):
    """Decodes a video with PyAV and yields its sampled frames.

    Args:
        path: the video file.
        every_seconds: take the first frame at or after each multiple of this many seconds (when `every_frames` is None).
        every_frames: take every this many-th frame.

    Yields:
        `(frame index, seconds, RGB uint8 array [h, w, 3])`.
    """
    import av

    tick = current_progress_hook()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or 0
        next_time = 0.0
        for index, frame in enumerate(container.decode(stream)):
            tick(path, index + 1, total)
            seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
            if every_frames:
                take = index % every_frames == 0
            else:
                take = seconds + 1e-6 >= next_time
                if take:
                    next_time += every_seconds * max(1, int((seconds - next_time) // every_seconds) + 1)
            if take:
                yield index, seconds, frame.to_ndarray(format="rgb24")


def frame_outputs(inputs, report, run_images, run_pixels, *, batch_size, every_seconds, every_frames, start_timecode=None):
    """Runs an export over image files, folders and videos in batches of `batch_size`.

    The flag values are checked by the caller (`check_batch_size`, `check_sampling`).

    Args:
        inputs: image files, folders and videos, as the user named them.
        report: called as `report(path, reason)` for each unreadable file, which is skipped.
        run_images: encoded images (list of bytes) -> dict of numpy arrays, one row per image.
        run_pixels: decoded video frames (uint8 `[n, h, w, 3]`) -> dict of numpy arrays, one row per frame.
        batch_size: inputs per call of `run_images` or `run_pixels`.
        every_seconds: video: sample one frame every this many seconds (None with `every_frames` None: 1.0).
        every_frames: video: sample one frame every this many frames.
        start_timecode: video: the first frame's timecode (None: the file's timecode tag, else 00:00:00:00).

    Yields:
        `(source, output)` per readable image or sampled frame: `source` holds the file (and for videos
        the frame index, its SMPTE timecode and its time in seconds), `output` each array's row for that input.
    """
    images, videos = expand_inputs(inputs, report)
    batch = batch_size

    def split(outputs, sources):
        return [(source, {k: v[i] for k, v in outputs.items()}) for i, source in enumerate(sources)]

    for start in range(0, len(images), batch):
        chunk, blobs = [], []
        for p in images[start : start + batch]:
            try:
                blobs.append(p.read_bytes())
                chunk.append(p)
            except OSError as e:
                report(p, e.strerror or str(e))
        if not chunk:
            continue
        try:
            yield from split(run_images(blobs), [{"source": str(p)} for p in chunk])
        except tf.errors.InvalidArgumentError:  # one bad file fails the batch: find it, keep the rest
            for p, blob in zip(chunk, blobs):
                try:
                    outputs = run_images([blob])
                except tf.errors.InvalidArgumentError:
                    report(p, "not a readable JPEG, PNG, GIF or BMP image")
                    continue
                yield from split(outputs, [{"source": str(p)}])

    every_seconds = 1.0 if every_seconds is None and every_frames is None else every_seconds
    from training.tasks.shots import open_clock

    for video in videos:
        pending, sources = [], []
        try:
            clock = open_clock(video, start_timecode)
            for index, seconds, pixels in video_frames(video, every_seconds, every_frames):
                pending.append(pixels)
                sources.append({"source": str(video), "frame": index, "timecode": clock.timecode(index),
                                "seconds": round(seconds, 3)})
                if len(pending) == batch:
                    yield from split(run_pixels(np.stack(pending)), sources)
                    pending, sources = [], []
        except UserError:
            raise
        except Exception as e:  # PyAV raises its own error types for damaged or unknown files
            report(video, f"video could not be decoded ({type(e).__name__}: {e})")
        if pending:
            yield from split(run_pixels(np.stack(pending)), sources)


def add_frame_arguments(parser, inputs_help: str) -> None:
    """Adds the flags every task that reads frames takes: INPUT..., `--every-seconds`, `--every-frames`, `--batch-size`.

    Args:
        parser: the `reelml predict` parser.
        inputs_help: the help text of the positional inputs.
    """
    # nargs="*", not "+": no input is a UserError naming what to give (exit 2, one line), not argparse's usage text.
    parser.add_argument("inputs", nargs="*", help=inputs_help)
    parser.add_argument("--every-seconds", type=float, help="video: sample one frame every this many seconds (default 1.0)")
    parser.add_argument("--every-frames", type=int, help="video: sample one frame every this many frames")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per call of the model")
    from training.predict_many import add_many_arguments

    add_many_arguments(parser)
