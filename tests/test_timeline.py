"""Shot and QC-event lists (`training.tasks.timeline`): PySceneDetect's columns, and EDL / OTIO files written
through OpenTimelineIO's adapters and read back with them.

No TensorFlow is needed here, but `training/tasks/__init__.py` imports every task (and so TensorFlow)
when any `training.tasks` module is imported: about 3 s.
"""

from __future__ import annotations

import json
from fractions import Fraction

import opentimelineio as otio
import pytest
from opentimelineio import opentime

from training.errors import UserError
from training.tasks.timecode import Clock, parse_timecode
from training.tasks.timeline import (SCENE_LIST_COLUMNS, TIMELINE_FORMATS, range_columns, read_timeline, reel_name,
                                     write_timeline)

R23976 = Fraction(24000, 1001)
R2997 = Fraction(30000, 1001)


def make_events(tmp_path, rate, start_tc):
    """Three events of one video at `rate` whose first frame is `start_tc`; the second is flagged."""
    source = tmp_path / "A001_C002 take-1.mov"
    start = parse_timecode(start_tc, rate)
    common = {"source": str(source), "rate": str(rate), "start_timecode_frames": start}
    return [
        {**common, "start_frame": 0, "end_frame": 48, "name": "shot 1 close_up", "flagged": False,
         "note": "close_up 0.93, runner-up wide 0.05", "scores": [0.93, 0.05]},
        {**common, "start_frame": 48, "end_frame": 148, "name": "shot 2 wide", "flagged": True,
         "note": "QC: 3 of 5 frames flagged, worst score 0.41", "worst": 0.41},
        {**common, "start_frame": 1800, "end_frame": 1810, "name": "shot 3 insert", "flagged": False,
         "note": "insert 0.71, runner-up close_up 0.20"},
    ]


CASES = [
    pytest.param(R23976, "01:00:00:00", ["01:00:00:00", "01:00:02:00", "01:01:15:00"], id="23.976"),
    pytest.param(R2997, "00:59:59;28", ["00:59:59;28", "01:00:01;16", "01:00:59;28"], id="29.97DF"),
]


def test_range_columns_hand_checked():
    clock = Clock(Fraction(25), parse_timecode("01:00:00:00", Fraction(25)))
    row = range_columns(2, 50, 125, clock)
    assert list(row) == SCENE_LIST_COLUMNS
    assert row == {
        "Scene Number": 2,
        "Start Frame": 51, "Start Timecode": "01:00:02:00", "Start Time (seconds)": 2.0,
        "End Frame": 125, "End Timecode": "01:00:05:00", "End Time (seconds)": 5.0,
        "Length (frames)": 75, "Length (timecode)": "00:00:03:00", "Length (seconds)": 3.0,
    }


def test_range_columns_fractional_and_drop_frame():
    row = range_columns(1, 0, 1800, Clock(R2997, parse_timecode("00:59:59;28", R2997)))
    assert (row["Start Timecode"], row["End Timecode"]) == ("00:59:59;28", "01:00:59;28")
    assert row["Length (timecode)"] == "00:01:00;02"  # the duration alone, still drop-frame
    assert (row["End Time (seconds)"], row["Length (seconds)"]) == (60.06, 60.06)
    row = range_columns(7, 86313, 86400, Clock(R23976))
    assert row["Start Frame"] == 86314 and row["End Frame"] == 86400
    assert (row["Start Timecode"], row["End Timecode"], row["Length (timecode)"]) == ("00:59:56:09", "01:00:00:00", "00:00:03:15")
    assert row["Start Time (seconds)"] == round(86313 * 1001 / 24000, 3) == 3599.971


@pytest.mark.parametrize("rate, start_tc, timecodes", CASES)
def test_otio_round_trip(tmp_path, rate, start_tc, timecodes):
    events = make_events(tmp_path, rate, start_tc)
    path = tmp_path / "shots.otio"
    write_timeline(path, events, "reel 1 shots")
    clips = read_timeline(path)
    start = events[0]["start_timecode_frames"]
    assert [c["name"] for c in clips] == [e["name"] for e in events]
    assert [c["start"] for c in clips] == [start + e["start_frame"] for e in events]
    assert [c["duration"] for c in clips] == [48, 100, 10]
    assert [c["start_timecode"] for c in clips] == timecodes
    assert [c["markers"] for c in clips] == [[e["note"]] for e in events]
    assert {c["source"] for c in clips} == {str(tmp_path / "A001_C002 take-1.mov")}

    timeline = otio.adapters.read_from_file(str(path))  # plain OpenTimelineIO, no reelml in between
    assert timeline.name == "reel 1 shots"
    (track,) = timeline.tracks
    assert track.kind == otio.schema.TrackKind.Video
    markers = [clip.markers[0] for clip in track.find_clips()]
    assert [m.color for m in markers] == ["GREEN", "RED", "GREEN"]
    for clip, marker in zip(track.find_clips(), markers):
        assert clip.source_range.contains(marker.marked_range.start_time)
        assert clip.source_range.start_time.rate == pytest.approx(float(rate))
    assert dict(track[1].metadata["reelml"])["worst"] == 0.41
    assert list(track[0].metadata["reelml"]["scores"]) == [0.93, 0.05]
    assert json.loads(path.read_text())["OTIO_SCHEMA"].startswith("Timeline")


@pytest.mark.parametrize("rate, start_tc, timecodes", CASES)
def test_edl_round_trip(tmp_path, rate, start_tc, timecodes):
    events = make_events(tmp_path, rate, start_tc)
    path = tmp_path / "qc.edl"
    write_timeline(path, events, "reel 1 QC")
    clips = read_timeline(path, rate=rate)
    start = events[0]["start_timecode_frames"]
    assert [c["name"] for c in clips] == [e["name"] for e in events]
    assert [c["start"] for c in clips] == [start + e["start_frame"] for e in events]
    assert [c["duration"] for c in clips] == [48, 100, 10]
    assert [c["start_timecode"] for c in clips] == timecodes
    assert [c["markers"] for c in clips] == [[e["note"].upper()] for e in events]  # an EDL's LOC text is in capitals
    assert [c["reel"] for c in clips] == ["A001_C00"] * 3

    text = path.read_text()
    assert text.startswith("TITLE: reel 1 QC\n")
    lines = text.splitlines()
    events_lines = [line for line in lines if line[:3].isdigit()]
    assert len(events_lines) == 3
    for line, tc in zip(events_lines, timecodes):
        fields = line.split()
        assert fields[1] == "A001_C00" and fields[2] == "V" and fields[3] == "C" and fields[4] == tc
    assert "* FROM CLIP NAME:  shot 2 wide" in lines
    flagged = [line for line in lines if line.startswith("* LOC:") and " RED " in line]
    assert flagged == [f"* LOC: {timecodes[1]} RED     QC: 3 OF 5 FRAMES FLAGGED, WORST SCORE 0.41"]
    assert sum(line.startswith("* LOC:") and " GREEN " in line for line in lines) == 2


def test_edl_read_with_plain_opentimelineio(tmp_path):
    events = make_events(tmp_path, R23976, "01:00:00:00")
    path = tmp_path / "qc.edl"
    write_timeline(path, events, "QC")
    timeline = otio.adapters.read_from_file(str(path), rate=float(R23976))
    clips = list(timeline.find_clips())
    assert [clip.source_range.start_time.value for clip in clips] == [86400, 86448, 88200]
    assert [[m.name for m in clip.markers] for clip in clips][1] == ["QC: 3 OF 5 FRAMES FLAGGED, WORST SCORE 0.41"]
    assert [clip.markers[0].color for clip in clips] == ["GREEN", "RED", "GREEN"]
    assert clips[0].media_reference.target_url == str(tmp_path / "A001_C002 take-1.mov")
    assert opentime.to_timecode(clips[2].source_range.end_time_exclusive(), float(R23976)) == "01:01:15:10"


def test_reel_names():
    assert reel_name("/x/A001_C002_0101XY.mov") == "A001_C00"
    assert reel_name("my shot.v2.mp4") == "myshotv2"
    assert reel_name("ab.mov") == "ab"
    assert reel_name("/x/ééé.mov") == "AX"


def test_bad_suffix(tmp_path):
    for name in ("shots.xml", "shots", "shots.csv"):
        with pytest.raises(UserError) as e:
            write_timeline(tmp_path / name, make_events(tmp_path, R23976, "01:00:00:00"), "x")
        message = str(e.value)
        assert message.startswith(f"--output {tmp_path / name}:")
        for ext in (".csv", ".jsonl", ".edl", ".otio"):
            assert ext in message
    with pytest.raises(UserError, match="--output"):
        read_timeline(tmp_path / "shots.xml")
    assert set(TIMELINE_FORMATS) == {".edl", ".otio"}
    assert list(tmp_path.iterdir()) == []


def test_edl_needs_one_smpte_rate(tmp_path):
    events = make_events(tmp_path, R23976, "01:00:00:00")
    events[2]["rate"] = "25"
    with pytest.raises(UserError, match=r"^--output .*one frame rate"):
        write_timeline(tmp_path / "mixed.edl", events, "x")
    write_timeline(tmp_path / "mixed.otio", events, "x")  # OTIO keeps a rate per clip
    assert [c["start_timecode"] for c in read_timeline(tmp_path / "mixed.otio")][2] == "00:58:48:00"  # 86400 + 1800 frames at 25
    with pytest.raises(UserError, match=r"^--output .*120 fps"):
        write_timeline(tmp_path / "fast.edl", [{**e, "rate": "120"} for e in events], "x")
    with pytest.raises(UserError, match="frame rate"):
        read_timeline(tmp_path / "none.edl")  # an EDL does not say its rate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.otio"]


def test_writes_atomically(tmp_path, monkeypatch):
    events = make_events(tmp_path, R23976, "01:00:00:00")
    path = tmp_path / "qc.edl"
    path.write_text("the old EDL\n")

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(otio.adapters, "write_to_file", crash)
    with pytest.raises(RuntimeError):
        write_timeline(path, events, "x")
    assert path.read_text() == "the old EDL\n"
    assert [p.name for p in tmp_path.iterdir()] == ["qc.edl"]
    monkeypatch.undo()

    write_timeline(path, events, "x")
    write_timeline(tmp_path / "qc.otio", events, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.edl", "qc.otio"]
    assert "the old EDL" not in path.read_text()


def test_no_events(tmp_path):
    write_timeline(tmp_path / "none.edl", [], "nothing flagged")
    write_timeline(tmp_path / "none.otio", [], "nothing flagged")
    assert read_timeline(tmp_path / "none.edl", rate="24000/1001") == []
    assert read_timeline(tmp_path / "none.otio") == []
    assert (tmp_path / "none.edl").read_text() == "TITLE: nothing flagged\n\n"


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"^--output .*cannot write"):
        write_timeline(tmp_path / "no" / "such.otio", make_events(tmp_path, R23976, "01:00:00:00"), "x")
