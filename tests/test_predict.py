"""`reelml predict` over image files, folders and videos, as a user runs it."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from training.config import load_config
from training.train import train

from conftest import CONFIGS, run_cli, smoke_overrides


@pytest.fixture(scope="module")
def trained(sample_frames, tmp_path_factory):
    """One smoke export shared by the predict tests."""
    import os

    workdir = tmp_path_factory.mktemp("predict")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = train(load_config(CONFIGS / "smoke" / "frames.yaml", smoke_overrides(sample_frames, workdir)))
    finally:
        os.chdir(cwd)
    return workdir / result.export_dir.parent, sample_frames


def write_video(path, seconds=3, fps=10, size=(64, 48)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            pixels = np.full((size[1], size[0], 3), (i * 8) % 255, np.uint8)
            for packet in stream.encode(__import__("av").VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_images_and_folders_to_csv(trained, tmp_path):
    export_root, sample = trained
    folder = sample / "test" / "exterior"
    one = sample / "test" / "close_up" / "close_up_0000.jpg"
    result = run_cli("predict", export_root, one, folder, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _csv(result.stdout)
    assert len(rows) == 1 + len(list(folder.glob("*.jpg")))
    assert rows[0]["source"] == str(one)
    classes = {"close_up", "color_bars", "exterior", "interior", "title_card"}
    assert all(r["label"] in classes and 0.0 < float(r["confidence"]) <= 1.0 for r in rows)


def test_unreadable_files_are_reported_and_skipped(trained, tmp_path):
    export_root, sample = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    good = sample / "test" / "interior" / "interior_0001.jpg"
    result = run_cli("predict", export_root / "1", bad, good, "-o", tmp_path / "out.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skipped {bad}" in result.stderr and "1 input(s) skipped" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == [str(good)]


def test_video_is_sampled_with_timecodes(trained, tmp_path):
    export_root, _ = trained
    video = write_video(tmp_path / "clip.mp4", seconds=3, fps=10)
    result = run_cli("predict", export_root, video, "--every-seconds", "1", "--top-k", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _csv(result.stdout)
    assert [r["timecode"] for r in rows] == ["00:00:00:00", "00:00:01:00", "00:00:02:00"]  # SMPTE, 10 frames a second
    assert [r["seconds"] for r in rows] == ["0.0", "1.0", "2.0"]
    assert [int(r["frame"]) for r in rows] == [0, 10, 20]
    assert all(len(r["top_k"].split(";")) == 2 for r in rows)

    result = run_cli("predict", export_root, video, "--every-frames", "7", "--format", "jsonl", cwd=tmp_path)
    frames = [json.loads(line)["frame"] for line in result.stdout.splitlines()]
    assert frames == [0, 7, 14, 21, 28]


def test_bad_predict_arguments_exit_2(trained, tmp_path):
    export_root, sample = trained
    cases = [
        ((tmp_path / "no-export", sample), "not a SavedModel export"),
        ((export_root, tmp_path / "missing.jpg"), "no such file or folder"),
        ((export_root, sample, "--every-seconds", "0"), "--every-seconds must be > 0"),
        ((export_root, sample, "-o", tmp_path / "nowhere" / "out.csv"), "does not exist"),
    ]
    for args, message in cases:
        result = run_cli("predict", *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_no_inputs_for_a_frames_export_is_a_clear_error(trained, tmp_path):
    export_root, _ = trained
    result = run_cli("predict", export_root, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "give at least one image file, folder of images or video" in result.stderr
