"""SMPTE timecodes of video frames (`training.tasks.timecode`): the counts checked against the `timecode`
library and hand-computed values, start timecodes from a flag or a file's tag, and bad flag values.

No TensorFlow is needed here, but `training/tasks/__init__.py` imports every task (and so TensorFlow)
when any `training.tasks` module is imported: about 3 s.
"""

from __future__ import annotations

import types
from fractions import Fraction

import av
import numpy as np
import pytest
from timecode import Timecode

from training.errors import UserError
from training.tasks.timecode import Clock, clock_of, container_start_timecode, parse_timecode, smpte_rate

R23976 = Fraction(24000, 1001)
R2997 = Fraction(30000, 1001)
R5994 = Fraction(60000, 1001)
TWO_HOURS = 2 * 3600 * 60  # frames: enough for two hours at every rate here


def write_video(path, rate, timecode=None, frames=5):
    """A tiny H.264 video at `rate`, tagged with `timecode` (MOV/MP4 write it as a tmcd track too)."""
    with av.open(str(path), "w") as container:
        if timecode is not None:
            container.metadata["timecode"] = timecode
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -- the counts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame, expected", [
    (0, "00:00:00:00"), (23, "00:00:00:23"), (24, "00:00:01:00"), (1440, "00:01:00:00"),
    (86313, "00:59:56:09"),  # an hour of 23.976 footage: counted at 24 a second, so 3.6 s short of 01:00:00:00
    (86400, "01:00:00:00"),
])
def test_23976_counts_non_drop_at_24(frame, expected):
    clock = Clock(R23976)
    assert not clock.is_drop_frame
    assert clock.timecode(frame) == expected


@pytest.mark.parametrize("rate, frame, expected", [
    (R2997, 1799, "00:00:59;29"), (R2997, 1800, "00:01:00;02"), (R2997, 17982, "00:10:00;00"),
    (R2997, 17981, "00:09:59;29"), (R2997, 107892, "01:00:00;00"),
    (R5994, 3599, "00:00:59;59"), (R5994, 3600, "00:01:00;04"), (R5994, 215784, "01:00:00;00"),
])
def test_drop_frame_hand_computed(rate, frame, expected):
    clock = Clock(rate)
    assert clock.is_drop_frame
    assert clock.timecode(frame) == expected


@pytest.mark.parametrize("label, rate, kwargs", [
    ("23.976", R23976, {"force_non_drop_frame": True}),
    ("24", Fraction(24), {}),
    ("25", Fraction(25), {}),
    ("29.97", R2997, {}),  # the library counts 29.97 drop-frame
    ("30", Fraction(30), {}),
    ("50", Fraction(50), {}),
    ("59.94", R5994, {}),
])
def test_matches_timecode_library_over_two_hours(label, rate, kwargs):
    clock = Clock(rate)
    for n in list(range(0, TWO_HOURS, 997)) + [107892, 215784, TWO_HOURS]:
        assert clock.timecode(n) == str(Timecode(label, frames=n + 1, **kwargs)), n  # the library counts from 1


def test_non_drop_2997_when_asked():
    clock = Clock(R2997, drop_frame=False)
    assert not clock.is_drop_frame
    assert clock.timecode(107892) == "00:59:56:12"
    assert clock.timecode(108000) == str(Timecode("29.97", frames=108001, force_non_drop_frame=True)) == "01:00:00:00"


def test_drop_frame_only_at_2997_and_5994():
    for rate in (R23976, 24, 25, 30, 50, 60):
        assert not Clock(rate).is_drop_frame
        with pytest.raises(ValueError, match="29.97 and 59.94"):
            Clock(rate, drop_frame=True)


def test_start_timecode_is_added():
    clock = Clock(Fraction(25), parse_timecode("01:00:00:00", Fraction(25)))
    assert clock.start == 90000
    assert clock.timecode(0) == "01:00:00:00"
    assert clock.timecode(25) == "01:00:01:00"
    assert clock.seconds(25) == 1.0  # seconds count from the file's first frame, not the start timecode


def test_seconds_exact_at_fractional_rates():
    clock = Clock(R23976, start=86400)
    assert clock.seconds(0) == 0.0
    assert clock.seconds(24000) == 1001.0
    assert clock.seconds(86313) == float(Fraction(86313 * 1001, 24000))
    assert Clock(R2997).seconds(107892) == pytest.approx(3599.9964, abs=1e-9)


def test_rates_near_smpte_count_in_it_and_others_have_none():
    assert smpte_rate(Fraction(2997, 100)) == pytest.approx(float(R2997))
    assert Clock(Fraction(2997, 100)).timecode(107892) == "01:00:00;00"
    assert smpte_rate(Fraction(25)) == 25.0
    for rate in (12, 15, 100, 120):
        assert smpte_rate(rate) is None  # counted non-drop at the whole-number rate instead, as FFmpeg does
        assert Clock(rate).timecode(rate * 3661 + 5) == "01:01:01:05"
        assert parse_timecode("01:01:01:05", rate) == rate * 3661 + 5
        assert Clock(rate).seconds(rate) == 1.0
    assert Clock(Fraction(10), start=10 * 3600).timecode(25) == "01:00:02:05"


def test_bad_clock_values():
    with pytest.raises(ValueError):
        Clock(Fraction(0))
    with pytest.raises(ValueError):
        Clock(Fraction(25), start=-1)
    with pytest.raises(ValueError):
        Clock(Fraction(25)).timecode(-1)


# -- parse_timecode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, rate", [
    ("00:00:00:00", Fraction(25)), ("01:00:00:00", Fraction(25)), ("10:59:59:24", Fraction(25)),
    ("23:59:59:23", R23976), ("00:59:56:09", R23976), ("01:00:00:00", R23976),
    ("01:00:00;00", R2997), ("00:01:00;02", R2997), ("00:10:00;00", R2997), ("00:09:59;29", R2997),
    ("01:00:00:00", R2997),  # non-drop at 29.97: a `:` says so
    ("01:00:00;00", R5994), ("00:01:00;04", R5994), ("12:34:56:59", Fraction(60)),
])
def test_parse_round_trips(text, rate):
    frames = parse_timecode(text, rate)
    assert Clock(rate, 0, ";" in text if Clock(rate).is_drop_frame else None).timecode(frames) == text


def test_parse_values():
    assert parse_timecode("01:00:00;00", R2997) == 107892
    assert parse_timecode("01:00:00:00", R2997) == 108000
    assert parse_timecode("01:00:00:00", R23976) == 86400
    assert parse_timecode("00:00:01:00", Fraction(25)) == 25
    assert parse_timecode(" 00:00:01:00 ", Fraction(25)) == 25
    assert parse_timecode("00:00:01;05", Fraction(25)) == 30  # a drop-frame label at a non-drop rate: read non-drop
    assert parse_timecode("12.5", R23976) == round(12.5 * 24000 / 1001) == 300
    assert parse_timecode("0", Fraction(25)) == 0
    assert parse_timecode("3600", R2997) == 107892
    assert parse_timecode("2", 120) == 240  # seconds work at rates without SMPTE timecode


@pytest.mark.parametrize("text, rate", [
    ("", Fraction(25)), ("abc", Fraction(25)), ("1:00:00:00", Fraction(25)), ("01:00:00", Fraction(25)),
    ("01:00:00:00:00", Fraction(25)), ("01-00-00-00", Fraction(25)), ("-1", Fraction(25)), ("-00:00:01:00", Fraction(25)),
    ("1e3", Fraction(25)), ("nan", Fraction(25)),
    ("00:00:00:25", Fraction(25)), ("00:00:00:24", R23976), ("00:00:00;30", R2997), ("00:00:00:60", R5994),
    ("00:60:00:00", Fraction(25)), ("00:00:60:00", Fraction(25)), ("24:00:00:00", Fraction(25)),
    ("00:01:00;00", R2997), ("00:01:00;01", R2997), ("00:02:00;03", R5994),  # skipped by drop-frame
    ("00:00:00:12", 12),  # frames run 00-11 at 12 fps
])
def test_parse_bad_values_name_the_flag(text, rate):
    with pytest.raises(UserError) as e:
        parse_timecode(text, rate)
    message = str(e.value)
    assert message.startswith(f"--start-timecode {text}:")
    assert "HH:MM:SS" in message or "seconds" in message


def test_parse_names_the_given_flag():
    with pytest.raises(UserError, match=r"^--tc 99:00:00:00: "):
        parse_timecode("99:00:00:00", Fraction(25), flag="--tc")


# -- videos ------------------------------------------------------------------------------------------


def test_mov_start_timecode_tag(tmp_path):
    path = write_video(tmp_path / "tagged.mov", R23976, "01:00:00:00")
    with av.open(str(path)) as container:
        assert container_start_timecode(container) == "01:00:00:00"
        clock = clock_of(container)
    assert clock.rate == R23976
    assert clock.start == 86400
    assert clock.timecode(0) == "01:00:00:00"
    assert clock.timecode(24) == "01:00:01:00"


def test_start_timecode_flag_wins(tmp_path):
    path = write_video(tmp_path / "tagged.mov", R23976, "01:00:00:00")
    with av.open(str(path)) as container:
        clock = clock_of(container, "10:00:00:00")
        assert clock.timecode(0) == "10:00:00:00"
        assert clock_of(container, "2").timecode(0) == "00:00:02:00"
        with pytest.raises(UserError, match="^--start-timecode 10:00:00:24: "):
            clock_of(container, "10:00:00:24")


def test_untagged_video_starts_at_zero(tmp_path):
    path = write_video(tmp_path / "plain.mp4", Fraction(25))
    with av.open(str(path)) as container:
        assert container_start_timecode(container) is None
        clock = clock_of(container)
    assert (clock.rate, clock.start) == (Fraction(25), 0)
    assert clock.timecode(50) == "00:00:02:00"


def test_drop_frame_tag_sets_the_count(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", R2997, "00:59:59;28")
    with av.open(str(path)) as container:
        clock = clock_of(container)
        assert clock.is_drop_frame
        assert [clock.timecode(i) for i in range(3)] == ["00:59:59;28", "00:59:59;29", "01:00:00;00"]
        non_drop = clock_of(container, "01:00:00:00")  # a `:` at 29.97: the user counts non-drop
        assert not non_drop.is_drop_frame
        assert non_drop.timecode(1) == "01:00:00:01"


class FakeStreams(list):
    @property
    def video(self):
        return [s for s in self if s.type == "video"]


def fake_container(rate, video_tags=None, data_tags=None, container_tags=None):
    """What `clock_of` reads of a PyAV container, with any tags (a real file's are hard to get wrong)."""
    video = types.SimpleNamespace(type="video", metadata=video_tags or {}, average_rate=rate, guessed_rate=None, base_rate=None)
    data = types.SimpleNamespace(type="data", metadata=data_tags or {})
    return types.SimpleNamespace(streams=FakeStreams([video, data]), metadata=container_tags or {})


def test_tag_sources_in_order():
    assert container_start_timecode(fake_container(25, {"timecode": "01:00:00:00"}, {"timecode": "02:00:00:00"})) == "01:00:00:00"
    assert container_start_timecode(fake_container(25, {}, {"timecode": "02:00:00:00"}, {"timecode": "03:00:00:00"})) == "02:00:00:00"
    assert container_start_timecode(fake_container(25, {}, {}, {"timecode": "03:00:00:00"})) == "03:00:00:00"
    assert container_start_timecode(fake_container(25)) is None


def test_no_rate_means_25():
    container = fake_container(None)
    assert clock_of(container).rate == Fraction(25)
    container.streams[0].guessed_rate = R23976
    assert clock_of(container).rate == R23976


def test_bad_tag_is_not_the_users_flag():
    container = fake_container(Fraction(25), {"timecode": "garbage"})
    with pytest.raises(ValueError, match="--start-timecode") as e:
        clock_of(container)
    assert not isinstance(e.value, UserError)  # the file's fault: the caller reports the file and goes on
    assert clock_of(container, "00:00:10:00").start == 250
