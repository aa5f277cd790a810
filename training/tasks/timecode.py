"""SMPTE timecodes of video frames, as editors read them.

A video's `Clock` (`clock_of`) turns a 0-based frame index of the file into its SMPTE timecode
(`HH:MM:SS:FF`, drop-frame `HH:MM:SS;FF`), counting from the file's start timecode: the
`--start-timecode` flag, else the container's `timecode` tag (a MOV/MP4 `tmcd` track), else
00:00:00:00. The counting is OpenTimelineIO's (`opentimelineio.opentime`), so the labels agree with
the EDL and OTIO files written from the same frames (`training.tasks.timeline`); seconds are kept
exact with the stream's `Fraction` rate, so an hour of 23.976 footage does not drift.

Drop-frame: by default at 29.97 and 59.94 fps, and only there. A start timecode given as a label
also says which count it is in, as OpenTimelineIO and FFmpeg read it: `;` before the frames is
drop-frame, `:` is non-drop (an NTSC file whose tag reads `01:00:00:00` counts non-drop).
"""

from __future__ import annotations

import dataclasses
import fractions
import re

from opentimelineio import opentime

from training.errors import UserError

TIMECODE = re.compile(r"^(\d\d):(\d\d):(\d\d)([:;])(\d\d)$")
SECONDS = re.compile(r"^\d+(\.\d*)?$|^\.\d+$")
DROP_FRAME_RATES = (fractions.Fraction(30000, 1001), fractions.Fraction(60000, 1001))
# How far a stream's rate may be from a SMPTE rate and still count in it (a variable-rate file's
# average, or 2997/100 for 30000/1001).
RATE_TOLERANCE = 0.01


def smpte_rate(rate) -> float | None:
    """The SMPTE timecode rate OpenTimelineIO counts a frame rate in, or None where it has none.

    Args:
        rate: a frame rate (`Fraction`, int or float).

    Returns:
        OpenTimelineIO's rate (23.976, 24, 25, 29.97, 30, 47.952, 48, 50, 59.94 or 60, as a float)
        nearest to `rate` within 1%, or None (e.g. at 12, 15, 100 or 120 fps).
    """
    value = float(rate)
    if value <= 0:
        return None
    if opentime.RationalTime.is_valid_timecode_rate(value):
        return value
    nearest = opentime.RationalTime.nearest_valid_timecode_rate(value)
    return nearest if abs(nearest - value) <= RATE_TOLERANCE * value else None


def _fraction(rate) -> fractions.Fraction:
    if isinstance(rate, fractions.Fraction):
        return rate
    if isinstance(rate, float):
        return fractions.Fraction(rate).limit_denominator(100000)
    return fractions.Fraction(rate)


def _rate_text(rate: fractions.Fraction) -> str:
    return f"{float(rate):g} fps" if rate.denominator in (1, 2, 4, 5) else f"{rate} ({float(rate):.3f}) fps"


@dataclasses.dataclass(frozen=True)
class Clock:
    """The frame rate and start timecode of a video: frame index -> SMPTE timecode and seconds.

    Args:
        rate: the stream's frame rate, e.g. `Fraction(24000, 1001)` (an int or float is taken too).
        start: the first frame's timecode as a frame count at `rate` (see `parse_timecode`).
        drop_frame: count drop-frame; None: drop-frame at 29.97 and 59.94 fps, and only there.

    Raises:
        ValueError: `rate` is not above 0, `start` is negative, or `drop_frame` is True at a rate that
            has no drop-frame count.
    """

    rate: fractions.Fraction
    start: int = 0
    drop_frame: bool | None = None

    def __post_init__(self):
        object.__setattr__(self, "rate", _fraction(self.rate))
        if self.rate <= 0:
            raise ValueError(f"frame rate {self.rate}: expected a rate above 0")
        if self.start < 0:
            raise ValueError(f"start {self.start}: expected a frame count >= 0")
        if self.drop_frame and not self._drop_frame_rate():
            raise ValueError(f"drop-frame timecode exists only at 29.97 and 59.94 fps, not at {_rate_text(self.rate)}")

    def _drop_frame_rate(self) -> bool:
        tc_rate = smpte_rate(self.rate)
        return tc_rate is not None and any(abs(tc_rate - float(r)) < 1e-6 for r in DROP_FRAME_RATES)

    @property
    def is_drop_frame(self) -> bool:
        """Whether the timecodes count drop-frame (`HH:MM:SS;FF`)."""
        return self._drop_frame_rate() if self.drop_frame is None else self.drop_frame

    def timecode(self, frame: int) -> str:
        """The SMPTE timecode of a frame of the file, its start timecode included.

        Args:
            frame: the 0-based index of the frame in the file.

        Returns:
            `"HH:MM:SS:FF"`, or `"HH:MM:SS;FF"` drop-frame (after 23:59:59 it wraps to 00:00:00, as SMPTE does).

            At a rate OpenTimelineIO has no timecode for (it counts at 23.976, 24, 25, 29.97, 30, 47.952,
            48, 50, 59.94 and 60 fps; footage at 10, 12 or 15 fps exists), frames are counted non-drop at
            the rate rounded to a whole number of frames a second, as FFmpeg does.

        Raises:
            ValueError: `frame` is negative.
        """
        if frame < 0:
            raise ValueError(f"frame {frame}: expected a 0-based index >= 0")
        tc_rate = smpte_rate(self.rate)
        if tc_rate is None:
            nominal = max(1, round(self.rate))
            seconds, frames = divmod(self.start + int(frame), nominal)
            minutes, secs = divmod(seconds, 60)
            hours, minutes = divmod(minutes, 60)
            return f"{hours % 24:02d}:{minutes:02d}:{secs:02d}:{frames:02d}"
        return opentime.to_timecode(opentime.RationalTime(self.start + int(frame), tc_rate), tc_rate, self.is_drop_frame)

    def seconds(self, frame: int) -> float:
        """The time of a frame from the file's first frame (the start timecode left out): `frame / rate`, exactly."""
        return float(fractions.Fraction(int(frame)) / self.rate)


def parse_timecode(text: str, rate, flag: str = "--start-timecode") -> int:
    """A timecode or a time in seconds -> a frame count at `rate`.

    Args:
        text: `"HH:MM:SS:FF"`, `"HH:MM:SS;FF"` (drop-frame at 29.97 and 59.94 fps; at other rates read
            as the same label non-drop), or plain seconds such as `"12.5"` (rounded to the nearest frame).
        rate: the frame rate (`Fraction`, int or float).
        flag: the flag or tag the text came from, named in the error.

    Returns:
        The frame count (00:00:00:00 is 0).

    Raises:
        UserError: the text is not one of those forms, or names a timecode that does not exist
            (minutes or seconds above 59, hours above 23, frames at or above the frame rate,
            a drop-frame label that is skipped).
    """
    rate = _fraction(rate)
    raw = str(text).strip()
    forms = "expected HH:MM:SS:FF, HH:MM:SS;FF (drop-frame) or seconds such as 12.5"
    if SECONDS.match(raw):
        return round(fractions.Fraction(raw) * rate)
    m = TIMECODE.match(raw)
    if not m:
        raise UserError(f"{flag} {text}: {forms}")
    hours, minutes, secs, sep, frames = m.groups()
    tc_rate = smpte_rate(rate)
    nominal = round(tc_rate) if tc_rate is not None else max(1, round(rate))
    if int(hours) > 23 or int(minutes) > 59 or int(secs) > 59 or int(frames) >= nominal:
        raise UserError(f"{flag} {text}: not a timecode at {_rate_text(rate)} (expected HH:MM:SS:FF with hours "
                        f"00-23, minutes and seconds 00-59, frames 00-{nominal - 1})")
    if tc_rate is None:  # no SMPTE count at this rate: non-drop at the whole-number rate, as `Clock.timecode`
        return ((int(hours) * 60 + int(minutes)) * 60 + int(secs)) * nominal + int(frames)
    drop = sep == ";" and Clock(rate).is_drop_frame
    label = f"{hours}:{minutes}:{secs}{';' if drop else ':'}{frames}"
    count = round(opentime.from_timecode(label, tc_rate).value)
    if Clock(rate, 0, drop).timecode(count) != label:
        raise UserError(f"{flag} {text}: no such drop-frame timecode (drop-frame skips frames 00 and 01 "
                        "of each minute but every tenth); " + forms)
    return count


def container_start_timecode(container) -> str | None:
    """The start timecode a video file is tagged with.

    Args:
        container: an open PyAV container.

    Returns:
        The `timecode` metadata of the first video stream, else of any stream (the MOV/MP4 `tmcd`
        data track), else of the container; None if there is none.
    """
    streams = list(container.streams.video[:1]) + list(container.streams)
    for metadata in [s.metadata for s in streams] + [container.metadata]:
        value = (metadata or {}).get("timecode")
        if value and value.strip():
            return value.strip()
    return None


def clock_of(container, start_timecode: str | None = None) -> Clock:
    """The `Clock` of a video: its frame rate and the timecode of its first frame.

    Args:
        container: an open PyAV container.
        start_timecode: the user's `--start-timecode` (wins over the file's tag); None: the file's
            tag (`container_start_timecode`), else 00:00:00:00.

    Returns:
        A `Clock` at the first video stream's average rate (else its guessed or base rate, else 25
        fps). A start given as a label at 29.97 or 59.94 fps sets the count: drop-frame with `;`,
        non-drop with `:`.

    Raises:
        UserError: `start_timecode` is not a timecode or time in seconds (see `parse_timecode`).
        ValueError: the file's own timecode tag is not a timecode at the stream's rate (give
            `--start-timecode`).
    """
    stream = container.streams.video[0] if container.streams.video else None
    rate = None
    if stream is not None:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    rate = fractions.Fraction(rate) if rate else fractions.Fraction(25)
    if start_timecode is not None:
        text, flag = start_timecode, "--start-timecode"
    else:
        text, flag = container_start_timecode(container), "the file's timecode tag"
    if text is None:
        return Clock(rate)
    try:
        start = parse_timecode(text, rate, flag)
    except UserError as e:
        if start_timecode is not None:
            raise
        raise ValueError(f"{e}; give --start-timecode") from None
    drop = None
    if TIMECODE.match(text.strip()) and Clock(rate).is_drop_frame:
        drop = ";" in text
    return Clock(rate, start, drop)
