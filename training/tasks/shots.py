"""Shots of a video: cuts found by PySceneDetect, a few frames of each shot run through an export.

One decoder does both jobs: PySceneDetect's PyAV backend (`VideoStreamAv`) decodes each frame once;
its `SceneManager` downscales the frame for the detector, and a tap on the stream keeps the decoded
full-size frames of the shot being read (thinned, evenly, to at most `4 * frames_per_shot + 4`, so
memory stays bounded however long the shot). Each time the detector reports a cut, the shot it
closes takes the `frames_per_shot` kept frames nearest to evenly spread points of the shot (the
middles of `frames_per_shot` equal parts), and only those go through the export, while decoding
goes on. A shot's answer comes from frames drawn inside it, and the model sees a few frames a shot,
not every frame.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np

from training.errors import UserError

# PySceneDetect's detectors by the name `--detector` takes; each keeps its own default threshold.
DETECTORS = ("content", "adaptive", "threshold", "hash", "histogram")
DEFAULT_DETECTOR = "content"
DEFAULT_MIN_SHOT_LENGTH = 15  # frames: PySceneDetect's default `min_scene_len`


@dataclasses.dataclass
class Shot:
    """One shot: frames `[start, end)` (0-based, end exclusive) and the model outputs of the frames drawn in it."""

    number: int
    start: int
    end: int
    frames: list[int]
    outputs: dict  # output name -> array, one row per drawn frame


def make_detector(name: str, threshold: float | None, min_shot_length: int):
    """PySceneDetect's detector `name`, with `threshold` (None: the detector's own default) and `min_scene_len`."""
    from scenedetect import detectors

    classes = {"content": detectors.ContentDetector, "adaptive": detectors.AdaptiveDetector,
               "threshold": detectors.ThresholdDetector, "hash": detectors.HashDetector,
               "histogram": detectors.HistogramDetector}
    if name not in classes:
        raise UserError(f"--detector {name}: expected one of {', '.join(DETECTORS)}")
    if min_shot_length < 1:
        raise UserError(f"--min-shot-length {min_shot_length}: expected at least 1 frame")
    kwargs = {"min_scene_len": min_shot_length}
    if threshold is not None:
        if not np.isfinite(threshold) or threshold < 0:
            raise UserError(f"--threshold {threshold}: expected a number >= 0 (the {name} detector's scale)")
        # AdaptiveDetector calls its threshold `adaptive_threshold`
        kwargs["adaptive_threshold" if name == "adaptive" else "threshold"] = threshold
    return classes[name](**kwargs)


def check_frames_per_shot(frames_per_shot: int) -> None:
    if frames_per_shot < 1:
        raise UserError(f"--frames-per-shot {frames_per_shot}: expected at least 1")


def spread(start: int, end: int, n: int) -> list[float]:
    """The middles of `n` equal parts of frames `[start, end)`."""
    length = end - start
    return [start + (i + 0.5) * length / n - 0.5 for i in range(n)]


class _Sampler:
    """The frames kept of the open shot (fed by the decoding thread) and the shots closed at each cut."""

    def __init__(self, run_pixels, frames_per_shot: int):
        self.run_pixels, self.frames_per_shot = run_pixels, frames_per_shot
        self.cap = 4 * frames_per_shot + 4
        self.lock = threading.Lock()
        self.kept: list[tuple[int, np.ndarray]] = []  # (frame index, BGR frame), ascending
        self.every, self.start = 1, 0  # keep every `every`-th frame counted from the open shot's `start`
        self.shots: list[Shot] = []
        # Decoded, not yet reached by the detector: PySceneDetect decodes in a thread of its own, up to a few frames
        # ahead. They are thinned in only when the detector reaches them, so which frames a shot keeps does not
        # depend on how far ahead the decoder happened to be.
        self.pending: list[tuple[int, np.ndarray]] = []

    def decoded(self, index: int, frame: np.ndarray) -> None:
        """A frame the decoding thread read (not yet seen by the detector)."""
        with self.lock:
            self.pending.append((index, frame))

    def advance(self, upto: float) -> None:
        """The detector reached frame `upto`: the frames decoded up to it are thinned in, in order."""
        with self.lock:
            ready = [p for p in self.pending if p[0] <= upto]
            self.pending = [p for p in self.pending if p[0] > upto]
        for index, frame in ready:
            self.add(index, frame)

    def add(self, index: int, frame: np.ndarray) -> None:
        with self.lock:
            if (index - self.start) % self.every:
                return
            self.kept.append((index, frame))
            if len(self.kept) > self.cap:  # thin evenly: every other kept frame goes, the spacing doubles
                self.every *= 2
                self.kept = [(i, f) for i, f in self.kept if (i - self.start) % self.every == 0]

    def cut(self, at: int) -> None:
        """A new shot starts at frame `at`: the shot before it is closed and run through the model."""
        with self.lock:
            inside = [(i, f) for i, f in self.kept if i < at]
            self.kept = [(i, f) for i, f in self.kept if i >= at]  # decoding may be ahead of the detector
            start, self.start, self.every = self.start, at, 1
        if at > start:
            self._close(start, at, inside)

    def _close(self, start: int, end: int, inside) -> None:
        number = len(self.shots) + 1
        if not inside:
            self.shots.append(Shot(number, start, end, [], {}))
            return
        indices = np.array([i for i, _ in inside])
        chosen = sorted({int(np.argmin(np.abs(indices - point))) for point in spread(start, end, self.frames_per_shot)})
        pixels = np.stack([inside[j][1][..., ::-1] for j in chosen])  # PySceneDetect's frames are BGR
        self.shots.append(Shot(number, start, end, [int(indices[j]) for j in chosen], self.run_pixels(pixels)))


def detect_shots(path: Path, run_pixels, *, detector, frames_per_shot: int):
    """Finds the shots of one video and runs `run_pixels` over frames drawn in each.

    Args:
        path: the video file.
        run_pixels: decoded RGB frames (uint8 `[n, h, w, 3]`) -> dict of numpy arrays, one row per frame.
        detector: a PySceneDetect detector (`make_detector`).
        frames_per_shot: frames drawn per shot (fewer when a shot has fewer frames).

    Returns:
        `[Shot]` in order, covering every frame of the video.
    """
    from scenedetect import SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    from training.tasks.video import current_progress_hook

    sampler = _Sampler(run_pixels, frames_per_shot)
    tick = current_progress_hook()  # of this thread: PySceneDetect reads in a thread of its own

    class Tap(VideoStreamAv):
        """The stream PySceneDetect reads, handing each decoded frame to the sampler too."""

        def read(self, decode: bool = True):
            frame = super().read(decode)
            if decode and frame is not False:
                sampler.decoded(self.frame_number - 1, frame)
                tick(path, self.frame_number, total)
            return frame

    def reporting(method, reached):  # the detector's cuts, told to the sampler as the detector finds them
        def wrapped(*args):
            sampler.advance(reached(*args))
            cuts = method(*args)
            for cut in cuts:
                sampler.cut(cut.frame_num)
            return cuts
        return wrapped

    detector.process_frame = reporting(detector.process_frame, lambda timecode, *_: timecode.frame_num)
    detector.post_process = reporting(detector.post_process, lambda *_: math.inf)
    manager = SceneManager()
    manager.add_detector(detector)
    stream = Tap(str(path), suppress_output=True)
    total = stream.duration.frame_num if stream.duration is not None else 0  # for the progress bar only
    manager.detect_scenes(stream)
    sampler.advance(math.inf)
    sampler.cut(stream.frame_number)  # the last shot ends with the video
    found = [(s.start, s.end) for s in sampler.shots]
    expected = [(a.frame_num, b.frame_num) for a, b in manager.get_scene_list(start_in_scene=True)]
    if expected and found != expected:  # the cuts as told must be PySceneDetect's scene list
        raise RuntimeError(f"shots {found} differ from PySceneDetect's scene list {expected}")
    return sampler.shots


def open_clock(path: Path, start_timecode: str | None):
    """The `Clock` of a video (its frame rate, and its start timecode: `start_timecode` or the container's tag)."""
    import av

    from training.tasks.timecode import clock_of

    with av.open(str(path)) as container:
        return clock_of(container, start_timecode)


def shot_outputs(inputs, report, run_pixels, *, detector, frames_per_shot, start_timecode=None):
    """Runs an export over the shots of every video among `inputs` (images are skipped, and said so).

    Args:
        inputs: videos and folders, as the user named them.
        report: `report(path, reason)` for each skipped or unreadable file.
        run_pixels: decoded frames (uint8 `[n, h, w, 3]`) -> dict of numpy arrays, one row per frame.
        detector: a detector factory: `detector()` -> a fresh PySceneDetect detector (one per video).
        frames_per_shot: see `detect_shots`.
        start_timecode: the first frame's timecode for every video (None: the container's, else 00:00:00:00).

    Yields:
        `(video path, Clock, [Shot])` per readable video.

    Raises:
        UserError: no video among the inputs.
    """
    from training.tasks.video import expand_inputs

    images, videos = expand_inputs(inputs, report)
    if not videos:
        raise UserError("--shots: none of the inputs is a video (" + ", ".join(map(str, inputs)) + ")")
    for image in images:
        report(image, "--shots takes videos; an image has no shots")
    for video in videos:
        try:
            clock = open_clock(video, start_timecode)
            shots = detect_shots(video, run_pixels, detector=detector(), frames_per_shot=frames_per_shot)
        except UserError:
            raise
        except Exception as e:  # PyAV and PySceneDetect raise their own error types for damaged or unknown files
            report(video, f"video could not be decoded ({type(e).__name__}: {e})")
            continue
        yield video, clock, shots


def add_shot_arguments(parser) -> None:
    """Adds `--shots` and its options (detector, threshold, frames per shot) and `--start-timecode`."""
    parser.add_argument("--shots", action="store_true",
                        help="video: one row per shot (cuts found by PySceneDetect), from frames drawn in each shot")
    parser.add_argument("--frames-per-shot", type=int, default=3, help="--shots: frames drawn per shot, spread over it (default 3)")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, metavar="NAME",  # checked by make_detector: one message
                        help=f"--shots: PySceneDetect detector, one of {', '.join(DETECTORS)} (default {DEFAULT_DETECTOR})")
    parser.add_argument("--threshold", type=float, help="--shots: the detector's threshold (default: PySceneDetect's for it)")
    parser.add_argument("--min-shot-length", type=int, default=DEFAULT_MIN_SHOT_LENGTH,
                        help=f"--shots: shortest shot in frames (default {DEFAULT_MIN_SHOT_LENGTH}, PySceneDetect's)")
    parser.add_argument("--start-timecode", metavar="TC",
                        help="video: timecode of the first frame, HH:MM:SS:FF (default: the file's timecode tag, else 00:00:00:00)")


def check_shot_options(shots: bool, frames_per_shot: int, detector: str, threshold, min_shot_length: int):
    """Checks the `--shots` options; returns a detector factory (None without `--shots`)."""
    if not shots:
        return None
    check_frames_per_shot(frames_per_shot)
    make_detector(detector, threshold, min_shot_length)  # names a bad value before any video is read
    return lambda: make_detector(detector, threshold, min_shot_length)


def range_row(video, clock, number: int, start: int, end: int) -> dict:
    """The columns every shot or QC event row starts with (PySceneDetect's scene list), and its `_event`
    (what the EDL and OTIO writers need; keys starting with `_` are not written to CSV or JSON lines)."""
    from training.tasks.timeline import range_columns

    return {"source": str(video), **range_columns(number, start, end, clock),
            "_event": {"source": str(video), "start_frame": int(start), "end_frame": int(end), "rate": str(clock.rate),
                       "start_timecode_frames": int(clock.start)}}
