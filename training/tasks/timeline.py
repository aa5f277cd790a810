"""Shot and QC-event lists for editors: PySceneDetect's CSV columns, CMX 3600 EDLs and OTIO timelines.

A row of `reelml predict --shots` (or of a QC event) starts with PySceneDetect's scene-list columns
(`range_columns`), with SMPTE timecodes from the video's `Clock`. `write_timeline` writes the same
ranges as one video track of clips, each with a marker carrying the row's note (red when flagged,
green otherwise), through OpenTimelineIO's adapters: `cmx_3600` for `.edl`, `otio_json` for `.otio`.

What the `cmx_3600` adapter does with them (otio-cmx3600-adapter 1.0):
- The reel of an event is the clip's `metadata["cmx_3600"]["reel"]`, written as it is (padded to 8
  columns, never cut or cleaned). Without one it takes the media file's name less its extension, drops
  every character but letters, digits and spaces, and cuts it to 8 (a space then splits the event
  line when the EDL is read). So each clip gets a reel here: the file's stem, of `[A-Za-z0-9_]`, at
  most 8 characters (names that agree in their first 8 characters share a reel).
- Each marker becomes a `* LOC: <timecode> <COLOR> <NAME>` comment under its event, the name in
  capitals; the clip's name is a `* FROM CLIP NAME:` line and the media path a `* FROM CLIP:` line.
- Timecodes at 29.97 and 59.94 fps are written drop-frame (`;`), with no `FCM:` line; the adapter's
  reader skips `LOC` lines whose timecode has a `;`, so `read_timeline` reads those as `:` (their
  names are kept, their times are not used).
- A timeline with no clips fails in the adapter: its EDL is then the title line alone, which is what
  the adapter writes for a track without events.
"""

from __future__ import annotations

import fractions
import json
import os
import re
import uuid
from pathlib import Path

from training.errors import UserError
from training.tasks.timecode import Clock, smpte_rate

SCENE_LIST_COLUMNS = ["Scene Number", "Start Frame", "Start Timecode", "Start Time (seconds)", "End Frame",
                      "End Timecode", "End Time (seconds)", "Length (frames)", "Length (timecode)", "Length (seconds)"]
TIMELINE_FORMATS = {".edl": "cmx_3600", ".otio": "otio_json"}
OUTPUT_EXTENSIONS = (".csv", ".jsonl", ".edl", ".otio")
REEL_LENGTH = 8


def range_columns(number: int, start: int, end: int, clock: Clock) -> dict:
    """PySceneDetect's scene-list columns for the frames `[start, end)` of a video.

    Args:
        number: the scene (shot or event) number, from 1.
        start: the first frame, 0-based.
        end: the frame after the last one (0-based, exclusive).
        clock: the video's `Clock`.

    Returns:
        A dict keyed by `SCENE_LIST_COLUMNS`: frames 1-based as PySceneDetect writes them (`Start Frame`
        is `start + 1`, `End Frame` is `end`, the last frame), SMPTE timecodes with the start timecode
        (`End Timecode` is that of frame `end`), seconds from the file's first frame to 3 decimals, and
        the length in frames, as a SMPTE duration (no start timecode) and in seconds.
    """
    length_clock = Clock(clock.rate, 0, clock.is_drop_frame)
    return {
        "Scene Number": int(number),
        "Start Frame": int(start) + 1,
        "Start Timecode": clock.timecode(start),
        "Start Time (seconds)": round(clock.seconds(start), 3),
        "End Frame": int(end),
        "End Timecode": clock.timecode(end),
        "End Time (seconds)": round(clock.seconds(end), 3),
        "Length (frames)": int(end) - int(start),
        "Length (timecode)": length_clock.timecode(end - start),
        "Length (seconds)": round(clock.seconds(end - start), 3),
    }


def check_timeline_suffix(path: Path) -> str:
    """The OpenTimelineIO adapter for an `--output` file's extension.

    Raises:
        UserError: the extension is not `.edl` or `.otio`.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in TIMELINE_FORMATS:
        raise UserError(f"--output {path}: expected one of {', '.join(OUTPUT_EXTENSIONS)} "
                        "(a timeline is .edl, CMX 3600, or .otio, OpenTimelineIO)")
    return TIMELINE_FORMATS[suffix]


def reel_name(source) -> str:
    """The EDL reel of a media file: its name less the extension, of `[A-Za-z0-9_]`, at most 8 characters (`AX` if none are left)."""
    return re.sub(r"[^A-Za-z0-9_]", "", Path(str(source)).stem)[:REEL_LENGTH] or "AX"


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _plain(value):
    """`value` as JSON types (numpy scalars and arrays, tuples, paths converted), for OTIO metadata."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def build_timeline(events: list[dict], title: str):
    """An OpenTimelineIO timeline of one video track, one clip with one marker per event (see `write_timeline`)."""
    import opentimelineio as otio
    from opentimelineio import opentime

    timeline = otio.schema.Timeline(name=_one_line(title))
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for event in events:
        rate = float(fractions.Fraction(str(event["rate"])))
        first = int(event["start_timecode_frames"]) + int(event["start_frame"])
        start = opentime.RationalTime(first, rate)
        clip = otio.schema.Clip(
            name=_one_line(event["name"]),
            media_reference=otio.schema.ExternalReference(target_url=os.path.abspath(str(event["source"]))),
            source_range=opentime.TimeRange(start, opentime.RationalTime(int(event["end_frame"]) - int(event["start_frame"]), rate)),
        )
        clip.metadata["reelml"] = _plain(event)
        clip.metadata["cmx_3600"] = {"reel": reel_name(event["source"])}  # the EDL's reel, kept in .otio for conversions
        flagged = bool(event["flagged"])
        clip.markers.append(otio.schema.Marker(
            name=_one_line(event["note"]),
            marked_range=opentime.TimeRange(start, opentime.RationalTime(0, rate)),
            color=otio.schema.MarkerColor.RED if flagged else otio.schema.MarkerColor.GREEN,
        ))
        track.append(clip)
    return timeline


def write_timeline(path: Path, events: list[dict], title: str) -> None:
    """Writes shots or QC events as an EDL (`.edl`, CMX 3600) or an OTIO timeline (`.otio`), atomically.

    One video track holds one clip per event, in order: the event's frames of its source file (the
    start timecode included), named after the event, with a marker at its first frame whose name is
    the event's note, red when flagged and green otherwise (in an EDL: a `* LOC:` line). Every key of
    the event is kept in the clip's metadata under `"reelml"`. The file is written to a temporary file
    next to `path`, then moved over it, so a crash leaves no half-written file.

    Args:
        path: the file to write; its extension picks the format.
        events: dicts with `"source"` (the video file), `"start_frame"` (0-based), `"end_frame"`
            (exclusive), `"rate"` (`"24000/1001"`, `"25"`, or a number), `"start_timecode_frames"` (the
            video clock's `start`), `"name"`, `"note"` and `"flagged"`, plus any JSON-serialisable keys.
        title: the timeline's name (an EDL's `TITLE:` line).

    Raises:
        UserError: the extension is not `.edl` or `.otio`, an EDL's events are not all at one frame rate
            or are at one without SMPTE timecode, or the file cannot be written.
    """
    import opentimelineio as otio

    path = Path(path)
    adapter = check_timeline_suffix(path)
    timeline = build_timeline(events, title)
    options = {}
    if adapter == "cmx_3600":
        rates = sorted({fractions.Fraction(str(e["rate"])) for e in events})
        if len(rates) > 1:
            raise UserError(f"--output {path}: an EDL has one frame rate, but the videos run at "
                            f"{', '.join(map(str, rates))}; write one EDL per rate, or .otio")
        if rates and smpte_rate(rates[0]) is None:
            raise UserError(f"--output {path}: an EDL counts in SMPTE timecode, which has no count at "
                            f"{float(rates[0]):g} fps; write .otio, .csv or .jsonl")
        if rates:
            options["rate"] = float(rates[0])
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if adapter == "cmx_3600" and not events:  # the adapter fails on an empty track
            tmp.write_text(f"TITLE: {timeline.name}\n\n" if timeline.name else "", encoding="utf-8")
        else:
            otio.adapters.write_to_file(timeline, str(tmp), adapter_name=adapter, **options)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--output {path}: cannot write it ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_timeline(path: Path, rate=None) -> list[dict]:
    """Reads an EDL or OTIO file back with OpenTimelineIO.

    Args:
        path: an `.edl` or `.otio` file.
        rate: an EDL's frame rate (`Fraction`, `"24000/1001"`, or a number): an EDL does not say it.
            Not used for `.otio`.

    Returns:
        Per clip, in order: `{"name", "source" (the media path), "reel" (EDL reel, or None), "start"
        (the source's first frame, as a frame count that includes the start timecode), "duration"
        (frames), "start_timecode" (SMPTE at the clip's rate; None at a rate without it), "markers" (their names)}`. An EDL's
        marker names come back in capitals, as it stores them.

    Raises:
        UserError: the extension is not `.edl` or `.otio`, or an EDL is read without `rate`.
    """
    import opentimelineio as otio
    from opentimelineio import opentime

    path = Path(path)
    adapter = check_timeline_suffix(path)
    if adapter == "cmx_3600":
        if rate is None:
            raise UserError(f"{path}: an EDL does not say its frame rate; give the rate it was written at")
        edl_rate = fractions.Fraction(str(rate))
        text = path.read_text(encoding="utf-8")
        # The adapter's reader matches LOC timecodes as HH:MM:SS:FF only and drops drop-frame ones.
        text = re.sub(r"^(\*\s*LOC:\s*\d\d:\d\d:\d\d);(\d\d)", r"\1:\2", text, flags=re.MULTILINE)
        timeline = otio.adapters.read_from_string(text, adapter_name="cmx_3600", rate=smpte_rate(edl_rate) or float(edl_rate))
    else:
        timeline = otio.adapters.read_from_file(str(path), adapter_name="otio_json")
    def timecode(time):
        try:
            return opentime.to_timecode(time, time.rate)
        except ValueError:  # a rate without SMPTE timecode
            return None

    clips = []
    for clip in timeline.find_clips():
        source_range = clip.source_range
        first = source_range.start_time
        reference = clip.media_reference
        clips.append({
            "name": clip.name,
            "source": getattr(reference, "target_url", None),
            "reel": clip.metadata.get("cmx_3600", {}).get("reel"),
            "start": round(first.value),
            "duration": round(source_range.duration.value_rescaled_to(first.rate)),
            "start_timecode": timecode(first),
            "markers": [marker.name for marker in clip.markers],
        })
    return clips
