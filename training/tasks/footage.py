"""Training frames from footage: labelled ranges of videos, decoded once into class folders.

`data.source: video` (frame CNN and autoencoder) reads a labels file of ranges, `video,start,end,label`:

- CSV with that header; `start` and `end` are SMPTE timecodes on the file's clock (its start
  timecode included, as an editor reads them off the timeline) or seconds from the file's start;
  `end` is exclusive. `video` is relative to the labels file's folder.
- EDL (CMX 3600) or OTIO: each clip is a range of its media file; the label is the clip's name, or
  its first marker's name when the clip has none.

Every `data.video_every_frames`-th frame of each range (counted from its start) is decoded once,
resized to `data.image_size` and written as a JPEG under `data.video_cache_dir/<fingerprint>/`,
`train/<label>/` (and `test/<label>/` from `data.video_test_labels`); the fingerprint covers the
videos' sizes and times, the labels and the sampling, so a change makes a new cache. The class
folders then go through the same pipeline as `data.source: folders`. The autoencoder may instead
take whole videos (`data.video_files`), every N-th frame of each.

Problems are reported with the file and line (CSV) or event (EDL, OTIO): a range outside its
video, two overlapping ranges of one video, an unknown timecode, an unreadable video.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

from training.errors import UserError

LABEL_COLUMNS = ("video", "start", "end", "label")
TIMELINE_SUFFIXES = {".edl": "cmx_3600", ".otio": "otio_json"}


@dataclasses.dataclass(frozen=True)
class LabelledRange:
    """Frames `[start, end)` (0-based indices of the file) of `video`, labelled `label`; `where` names its line."""

    video: Path
    start: int
    end: int
    label: str
    where: str


def _clock(video: Path, where: str):
    import av

    from training.tasks.timecode import clock_of

    if not video.is_file():
        raise UserError(f"{where}: video `{video}` does not exist")
    try:
        with av.open(str(video)) as container:
            clock = clock_of(container)
            stream = container.streams.video[0]
            frames = stream.frames or (round(float(stream.duration * stream.time_base) * float(clock.rate))
                                       if stream.duration else 0)
    except UserError:
        raise
    except Exception as e:  # PyAV's own error types for damaged or unknown files
        raise UserError(f"{where}: video `{video}` cannot be read ({type(e).__name__}: {e})") from None
    return clock, frames


def _frame_of(text: str, clock, where: str, column: str) -> int:
    from training.tasks.timecode import parse_timecode

    text = str(text).strip()
    if ":" in text or ";" in text:  # a timecode on the file's clock: its start timecode comes off
        return parse_timecode(text, clock.rate, flag=f"{where}: `{column}`") - clock.start
    return parse_timecode(text, clock.rate, flag=f"{where}: `{column}`")  # seconds from the file's start


def read_csv_labels(path: Path) -> list[LabelledRange]:
    """The ranges of a labels CSV (`video,start,end,label`)."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise UserError(f"labels `{path}`: cannot be read ({e.strerror or e})") from None
    clocks: dict[Path, tuple] = {}
    ranges = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"labels `{path}`: line 1: expected the columns {', '.join(LABEL_COLUMNS)} "
                            f"(missing {', '.join(missing)})")
        for line, row in enumerate(reader, start=2):
            where = f"labels `{path}` line {line}"
            if not all((row.get(c) or "").strip() for c in LABEL_COLUMNS):
                raise UserError(f"{where}: every row needs {', '.join(LABEL_COLUMNS)}")
            video = (path.parent / row["video"].strip()).resolve()
            if video not in clocks:
                clocks[video] = _clock(video, where)
            clock, _ = clocks[video]
            start, end = (_frame_of(row[c], clock, where, c) for c in ("start", "end"))
            ranges.append(LabelledRange(video, start, end, row["label"].strip(), where))
    return _checked(ranges, {v: n for v, (_, n) in clocks.items()})


def read_timeline_labels(path: Path) -> list[LabelledRange]:
    """The ranges of an EDL or OTIO: one per clip, labelled by the clip's name (or its first marker's)."""
    import opentimelineio as otio

    try:
        if path.suffix.lower() == ".edl":
            # EDL timecodes carry no rate: the first clip's video gives it
            first = next((line.split("FROM CLIP:", 1)[1].strip() for line in path.read_text().splitlines()
                          if "FROM CLIP:" in line), None)
            rate = float(_clock((path.parent / first).resolve(), f"labels `{path}`")[0].rate) if first else 24.0
            timeline = otio.adapters.read_from_file(str(path), adapter_name="cmx_3600", rate=rate)
        else:
            timeline = otio.adapters.read_from_file(str(path), adapter_name="otio_json")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"labels `{path}`: not a readable {path.suffix[1:].upper()} ({type(e).__name__}: {e})") from None
    clocks: dict[Path, tuple] = {}
    ranges = []
    for number, clip in enumerate(timeline.find_clips(), start=1):
        where = f"labels `{path}` event {number}"
        reference = clip.media_reference
        target = getattr(reference, "target_url", None)
        if not target:
            raise UserError(f"{where}: clip `{clip.name}` names no media file")
        video = Path(target.removeprefix("file://"))
        video = (path.parent / video).resolve() if not video.is_absolute() else video
        if video not in clocks:
            clocks[video] = _clock(video, where)
        clock, _ = clocks[video]
        label = (clip.name or (clip.markers[0].name if clip.markers else "")).strip()
        if not label:
            raise UserError(f"{where}: the clip has no name and no marker to label it")
        source = clip.source_range
        start = round(source.start_time.rescaled_to(float(clock.rate)).value) - clock.start
        length = round(source.duration.rescaled_to(float(clock.rate)).value)
        ranges.append(LabelledRange(video, start, start + length, label, where))
    return _checked(ranges, {v: n for v, (_, n) in clocks.items()})


def read_labels(path) -> list[LabelledRange]:
    """The labelled ranges of a CSV, EDL or OTIO file (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels `{path}`: no such file")
    if path.suffix.lower() in TIMELINE_SUFFIXES:
        return read_timeline_labels(path)
    return read_csv_labels(path)


def _checked(ranges: list[LabelledRange], lengths: dict[Path, int]) -> list[LabelledRange]:
    for r in ranges:
        if r.start < 0 or r.end <= r.start:
            raise UserError(f"{r.where}: range [{r.start}, {r.end}) of `{r.video.name}`: expected 0 <= start < end "
                            "(frames; end exclusive)")
        if lengths.get(r.video) and r.end > lengths[r.video]:
            raise UserError(f"{r.where}: range ends at frame {r.end}, after the end of `{r.video.name}` "
                            f"({lengths[r.video]} frames)")
    by_video: dict[Path, list[LabelledRange]] = {}
    for r in ranges:
        by_video.setdefault(r.video, []).append(r)
    for items in by_video.values():
        items.sort(key=lambda r: r.start)
        for a, b in zip(items, items[1:]):
            if b.start < a.end:
                raise UserError(f"{b.where}: range [{b.start}, {b.end}) `{b.label}` overlaps [{a.start}, {a.end}) "
                                f"`{a.label}` of {' '.join(a.where.split()[-2:])} in `{b.video.name}`")
    return ranges


def whole_videos(paths) -> list[LabelledRange]:
    """`data.video_files`: every frame of each video, labelled `frames` (the autoencoder has no classes)."""
    ranges = []
    for raw in paths:
        video = Path(raw).resolve()
        _, frames = _clock(video, "data.video_files")
        # a container that does not say how many frames it has: to its end, however long
        ranges.append(LabelledRange(video, 0, frames if frames else 2**62, "frames", f"data.video_files `{raw}`"))
    return ranges


def _fingerprint(ranges, every: int, size: int) -> str:
    stats = {str(v): [v.stat().st_size, v.stat().st_mtime_ns] for v in sorted({r.video for r in ranges})}
    key = json.dumps({"ranges": [[str(r.video), r.start, r.end, r.label] for r in ranges], "videos": stats,
                      "every": every, "size": size, "version": 1}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def extract(ranges: list[LabelledRange], out: Path, every: int, size: int) -> dict[str, int]:
    """Decodes each video once and writes every `every`-th frame of its ranges under `out/<label>/`."""
    import av
    import tensorflow as tf

    counts: dict[str, int] = {}
    by_video: dict[Path, list[LabelledRange]] = {}
    for r in ranges:
        by_video.setdefault(r.video, []).append(r)
    for video, items in by_video.items():
        items.sort(key=lambda r: r.start)
        last = max(r.end for r in items)
        try:
            with av.open(str(video)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                k = 0
                for index, frame in enumerate(container.decode(stream)):
                    if index >= last:
                        break
                    while k < len(items) and index >= items[k].end:
                        k += 1
                    if k == len(items):
                        break
                    r = items[k]
                    if index < r.start or (index - r.start) % every:
                        continue
                    pixels = tf.image.resize(frame.to_ndarray(format="rgb24"), (size, size), antialias=True)
                    jpeg = tf.io.encode_jpeg(tf.cast(tf.round(tf.clip_by_value(pixels, 0, 255)), tf.uint8), quality=95)
                    folder = out / r.label
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{video.stem}_{index:07d}.jpg").write_bytes(jpeg.numpy())
                    counts[r.label] = counts.get(r.label, 0) + 1
        except Exception as e:  # PyAV's own error types for damaged files
            raise UserError(f"{items[0].where}: video `{video}` cannot be decoded ({type(e).__name__}: {e})") from None
    return counts


def frame_folders(d) -> tuple[Path, Path | None]:
    """`(train folder, test folder or None)` of class folders for `data.source: video`, extracted once."""
    from training.atomic import building

    train = read_labels(d.video_labels) if d.video_labels else whole_videos(getattr(d, "video_files", None) or [])
    test = read_labels(d.video_test_labels) if d.video_test_labels else []
    key = _fingerprint(train + test, d.video_every_frames, d.image_size)
    root = Path(d.video_cache_dir) / key
    if not root.is_dir():
        with building(root) as scratch:
            counts = extract(train, scratch / "train", d.video_every_frames, d.image_size)
            if test:
                extract(test, scratch / "test", d.video_every_frames, d.image_size)
            (scratch / "ranges.json").write_text(json.dumps(
                {"train": [dataclasses.astuple(r)[1:4] + (str(r.video),) for r in train],
                 "test": [dataclasses.astuple(r)[1:4] + (str(r.video),) for r in test]}, indent=1))
        print(f"Frames from {len({r.video for r in train + test})} video(s): "
              + ", ".join(f"{label} {n}" for label, n in sorted(counts.items())) + f" (cached in {root})", flush=True)
    return root / "train", (root / "test") if test else None
