"""Training from footage: `data.source: video`, labelled ranges of generated videos (CSV, EDL, OTIO)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS

from training.config import load_config
from training.errors import UserError
from training.tasks.footage import read_labels
from training.tasks.frames.sample import CLASSES, write_reel

SHOT = 12  # frames per labelled shot
ROUNDS = 6  # each video: this many rounds of one shot of every class, each shot a different drawing


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two training reels and one test reel (rounds of one shot of every class, each a new drawing), labels CSVs."""
    root = tmp_path_factory.mktemp("footage")
    rows = {"train": [], "test": []}
    for name, seed, split in (("a", 1, "train"), ("b", 2, "train"), ("t", 3, "test")):
        order = [CLASSES[(i + seed) % len(CLASSES)] for i in range(len(CLASSES))] * ROUNDS
        bounds = write_reel(root / f"{name}.mov", [(c, SHOT) for c in order], fps=24, size=64, seed=seed,
                            start_timecode="01:00:00:00" if name == "a" else None)
        for label, start, end in bounds:
            if name == "a":  # timecodes on the file's clock (it starts at 01:00:00:00): as an editor reads them
                start_text, end_text = (f"01:00:{f // 24:02d}:{f % 24:02d}" for f in (start, end))
            else:  # seconds from the file's start
                start_text, end_text = f"{start / 24:.4f}", f"{end / 24:.4f}"
            rows[split].append(f"{name}.mov,{start_text},{end_text},{label}")
    for split in rows:
        (root / f"{split}.csv").write_text("video,start,end,label\n" + "\n".join(rows[split]) + "\n")
    return root


def _train(workdir: Path, overrides):
    from training.train import train

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return train(load_config(CONFIGS / "smoke" / "frames.yaml", [
            "tracking.enabled=false", "export.enabled=false", "train.epochs=15", "train.max_steps_per_epoch=null", "model.filters=[8, 16]",
            "data.batch_size=16", "data.cutmix=0", "data.mixup=0", "train.ema_momentum=null",  # the plain path: 15 epochs learn it
            *overrides]))
    finally:
        os.chdir(cwd)


def _as_folders(footage: Path, csv_name: str, out: Path, every: int):
    """The frames the labels name, decoded by the test itself and written at full size as PNG class folders."""
    import av
    import tensorflow as tf

    for r in read_labels(footage / csv_name):
        with av.open(str(r.video)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if r.start <= index < r.end and (index - r.start) % every == 0:
                    (out / r.label).mkdir(parents=True, exist_ok=True)
                    png = tf.io.encode_png(frame.to_ndarray(format="rgb24")).numpy()
                    (out / r.label / f"{r.video.stem}_{index}.png").write_bytes(png)


def test_labels_read_as_frame_ranges_from_timecodes_and_seconds(footage):
    ranges = read_labels(footage / "train.csv")
    n = len(CLASSES) * ROUNDS
    assert len(ranges) == 2 * n
    a = [r for r in ranges if r.video.name == "a.mov"]
    b = [r for r in ranges if r.video.name == "b.mov"]
    assert [(r.start, r.end) for r in a] == [(i * SHOT, (i + 1) * SHOT) for i in range(n)]  # 01:00:00:00 taken off
    assert [(r.start, r.end) for r in b] == [(i * SHOT, (i + 1) * SHOT) for i in range(n)]


def test_edl_and_otio_labels_give_the_ranges_of_the_csv(footage, tmp_path):
    from training.tasks.timeline import write_timeline

    ranges = read_labels(footage / "train.csv")
    events = [{"source": str(r.video), "start_frame": r.start, "end_frame": r.end, "rate": "24",
               "start_timecode_frames": 86400 if r.video.name == "a.mov" else 0, "name": r.label, "note": r.label,
               "flagged": False} for r in ranges if r.video.name == "a.mov"]
    for suffix in (".edl", ".otio"):
        write_timeline(tmp_path / f"labels{suffix}", events, title="labels")
        again = read_labels(tmp_path / f"labels{suffix}")
        assert [(r.video, r.start, r.end, r.label) for r in again] == \
            [(r.video, r.start, r.end, r.label) for r in ranges if r.video.name == "a.mov"], suffix


def test_training_from_video_matches_the_same_frames_as_folders(footage, tmp_path):
    every = 6
    by_video = _train(tmp_path, ["data.source=video", f"data.video_labels={footage / 'train.csv'}",
                                 f"data.video_test_labels={footage / 'test.csv'}", f"data.video_every_frames={every}",
                                 f"data.video_cache_dir={tmp_path / 'cache'}"])
    _as_folders(footage, "train.csv", tmp_path / "folders" / "train", every)
    _as_folders(footage, "test.csv", tmp_path / "folders" / "test", every)
    by_folders = _train(tmp_path, ["data.source=folders", f"data.train_dir={tmp_path / 'folders' / 'train'}",
                                   f"data.test_dir={tmp_path / 'folders' / 'test'}"])
    a, b = by_video.test_metrics["test_accuracy"], by_folders.test_metrics["test_accuracy"]
    assert a >= 0.8 and abs(a - b) <= 0.1, (a, b)  # 60 test frames: 0.1 is six frames
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and sum(1 for _ in cached[0].rglob("*.jpg")) == 3 * len(CLASSES) * ROUNDS * SHOT // every
    _train(tmp_path, ["data.source=video", f"data.video_labels={footage / 'train.csv'}", f"data.video_every_frames={every}",
                      f"data.video_test_labels={footage / 'test.csv'}", f"data.video_cache_dir={tmp_path / 'cache'}",
                      "train.epochs=1"])
    assert sorted((tmp_path / "cache").iterdir()) == cached  # decoded once: the same labels reuse the cache


def test_the_autoencoder_learns_from_whole_videos(footage, tmp_path):
    from training.train import train

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = train(load_config(CONFIGS / "smoke" / "autoencoder.yaml", [
            "tracking.enabled=false", "data.source=video", f"data.video_files=[{footage / 'a.mov'}, {footage / 'b.mov'}]",
            "data.video_every_frames=8", f"data.video_cache_dir={tmp_path / 'cache'}"]))
    finally:
        os.chdir(cwd)
    assert np.isfinite(result.history[-1]["loss"]) and result.export_dir is not None


@pytest.mark.parametrize("row, message", [
    ("a.mov,0,500,close_up", "line 2: range ends at frame 12000, after the end of `a.mov` (360 frames)"),
    ("a.mov,2,1,close_up", "line 2: range [48, 24) of `a.mov`: expected 0 <= start < end"),
    ("missing.mov,0,1,close_up", "line 2: video `"),
    ("a.mov,01:00:00:30,01:00:01:00,close_up", "line 2: `start` 01:00:00:30: not a timecode at 24 fps"),
    ("a.mov,0,,close_up", "line 2: every row needs video, start, end, label"),
])
def test_bad_labels_name_the_file_and_line(footage, tmp_path, row, message):
    from training.tasks.footage import frame_folders

    labels = footage / f"bad-{abs(hash(row))}.csv"
    labels.write_text("video,start,end,label\n" + row + "\n")
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", ["data.source=video", f"data.video_labels={labels}",
                                                          f"data.video_cache_dir={tmp_path}"])
    with pytest.raises(UserError) as e:
        frame_folders(cfg.data)
    assert f"labels `{labels}` " in str(e.value) and message in str(e.value), str(e.value)


def test_overlapping_labels_and_an_unreadable_video_are_named(footage):
    labels = footage / "overlap.csv"
    labels.write_text("video,start,end,label\nb.mov,0,2,close_up\nb.mov,1.5,3,exterior\n")
    with pytest.raises(UserError, match=r"line 3: range \[36, 72\) `exterior` overlaps \[0, 48\) `close_up` of line 2"):
        read_labels(labels)
    (footage / "broken.mov").write_bytes(b"not a video at all" * 100)
    (footage / "broken.csv").write_text("video,start,end,label\nbroken.mov,0,1,close_up\n")
    with pytest.raises(UserError, match=r"line 2: video `.*broken.mov` cannot be read"):
        read_labels(footage / "broken.csv")
    with pytest.raises(Exception, match="data.video_labels"):
        load_config(CONFIGS / "smoke" / "frames.yaml", ["data.source=video"])
