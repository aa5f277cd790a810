"""Bad inputs a user gives: malformed data files, damaged exports, odd batches at the serving signatures and
`reelml predict` options that do not fit. Each ends in one readable message naming the file, key or flag
(exit status 2, never a traceback) or in the documented behaviour.

Each smoke export is trained once for the module and copied before it is damaged.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training.cli import _print_summary
from training.cli import main as cli_main
from training.config import Columns, load_config
from training.errors import UserError
from training.tasks.autoencoder.data import load_data as load_autoencoder_data
from training.tasks.autoencoder.tables import read_table
from training.tasks.frames.data import load_data as load_frames_data
from training.tasks.recommender.readers import read_interactions

from conftest import CONFIGS, REPO, run_cli, write_jpeg_folders, train_export

SMOKE = CONFIGS / "smoke"
DATA = "variables/variables.data-00000-of-00001"


@pytest.fixture(scope="module")
def table_export(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad-table")
    return train_export(workdir, "autoencoder_dense.yaml", [f"data.sample_table_dir={workdir / 'features'}"])


@pytest.fixture(scope="module")
def dialogue_export(tmp_path_factory):
    return train_export(tmp_path_factory.mktemp("bad-dialogue"), "dialogue.yaml")


@pytest.fixture(scope="module")
def rec_export(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad-rec")
    return train_export(workdir, "recommender.yaml", [f"data.sample_dir={workdir / 'views'}"])


@pytest.fixture(scope="module")
def image(sample_frames):
    return sample_frames / "test" / "interior" / "interior_0001.jpg"


def _cli(capsys, *args):
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _user_error(capsys, *args):
    """Runs `reelml ...` in this process; expects exit 2 and one `reelml ...: error:` line; returns stderr."""
    code, _, err = _cli(capsys, *args)
    assert code == 2, err
    assert "error: " in err, err
    return err


def _all_user_errors(capsys, cases):
    """Runs every `(args, message)` case of `reelml predict`; lists each one that does not exit 2 with the message
    (and no traceback), so that one run shows every case that fails."""
    failures = []
    for args, message in cases:
        try:
            code = cli_main(["predict", *map(str, args)])
        except Exception as e:  # what a user would see as a traceback
            code = f"a traceback ({type(e).__name__}: {e})"
        err = capsys.readouterr().err
        if code != 2 or message not in err or "Traceback" in err or "error: " not in err:
            failures.append(f"{[str(a) for a in args]}: exit {code}, wanted {message!r} in:\n{err[-600:]}")
    assert not failures, f"{len(failures)} of {len(cases)} case(s) failed:\n" + "\n".join(failures)


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    """A copy of a whole export (`<name>/1`), so that a test can damage it."""
    target = tmp_path / "exports" / export_dir.parent.name
    shutil.copytree(export_dir.parent, target)
    return target / export_dir.name


# --------------------------------------------------------------------------- 12. data


@pytest.mark.parametrize("text, delimiter, line, fields", [
    ("user_id,item_id,timestamp,device\na,x,1,tv\nb,y,2\nc,z,3,phone\n", ",", 3, "expected 4 fields .*, found 3"),  # unmapped
    ("user_id,item_id,timestamp\na,x,1\n\nb,y\n", ",", 4, "expected 3 fields .*, found 2"),  # a mapped one, after a blank line
    ("user_id\titem_id\tdevice\na\tx\ttv\nb\ty\n", "\\t", 3, "expected 3 fields .*, found 2"),
    ("user_id::item_id::device\na::x::tv\nb::y\n", "::", 3, "expected 3 fields .*, found 2"),
])
def test_recommender_row_with_fewer_fields_than_the_header_names_file_and_line(tmp_path, text, delimiter, line, fields):
    path = tmp_path / "views.csv"
    path.write_text(text)
    columns = Columns(user="user_id", item="item_id", timestamp="timestamp" if "timestamp" in text else None)
    with pytest.raises(UserError, match=rf"views.csv: line {line}: malformed row, {fields}"):
        read_interactions(path, "csv", columns, delimiter)


def test_recommender_short_row_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "views.csv"
    path.write_text("user_id,item_id,device\n" + "".join(f"u{i % 7},i{i},tv\n" for i in range(200)) + "u1,i3\n")
    err = _user_error(capsys, "train", SMOKE / "recommender.yaml", "--set", "data.source=file", "--set", f"data.path={path}",
                      "--set", "tracking.enabled=false", "--set", "data.eval_negatives=5")
    assert f"{path}: line 202: malformed row, expected 3 fields (user_id, item_id, device), found 2" in err


def test_autoencoder_table_bad_value_names_file_and_line(tmp_path):
    path = tmp_path / "shots.csv"
    path.write_text("shot,a,b\ns0,1,2\n\ns1,3,oops\ns2,4,5\n")  # the blank line counts: `oops` is on line 4
    with pytest.raises(UserError, match=r"data.path `.*shots.csv`: line 4: column `b` holds non-numeric values, e.g. 'oops'"):
        read_table(path, id_column="shot")
    path.write_text("shot,a,b\ns0,1,2\ns1,3,\n")
    with pytest.raises(UserError, match=r"data.path `.*shots.csv`: line 3: row 2, column `b`: missing or infinite value"):
        read_table(path, id_column="shot")


def test_autoencoder_table_bad_value_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "shots.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(20)) + "7,seven\n")
    err = _user_error(capsys, "train", SMOKE / "autoencoder_dense.yaml", "--set", "data.source=table",
                      "--set", f"data.path={path}", "--set", "tracking.enabled=false")
    assert f"data.path `{path}`: line 22: column `b` holds non-numeric values, e.g. 'seven'" in err


def test_autoencoder_table_bad_value_in_predict_input(table_export, tmp_path, capsys):
    meta = json.loads((table_export / "assets.extra" / "reelml.json").read_text())
    columns, id_column = meta["feature_columns"], meta["id_column"]
    rows = [[f"s{i}"] + ["1.0"] * len(columns) for i in range(3)]
    rows[2][3] = "bright"
    path = tmp_path / "rows.csv"
    path.write_text(",".join([id_column, *columns]) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    err = _user_error(capsys, "predict", table_export, path)
    assert f"input `{path}`: line 4: column `{columns[2]}` holds non-numeric values, e.g. 'bright'" in err


def _folders_cfg(train_dir, config="frames.yaml"):
    return load_config(SMOKE / config, ["data.source=folders", f"data.train_dir={train_dir}", "tracking.enabled=false",
                                        "export.enabled=false", "data.validation_split=0.2"])


def test_empty_class_folder_is_warned_about_and_left_out(tmp_path, capsys):
    root = write_jpeg_folders(tmp_path / "train", classes=("a", "b", "c"), per_class=5, size=24)
    (root / "d").mkdir()
    data = load_frames_data(_folders_cfg(root), tmp_path / "run")
    err = capsys.readouterr().err
    assert f"class folder `{root / 'd'}` holds no images" in err and "class `d` is left out" in err
    assert data.class_names == ["a", "b", "c"]

    shutil.rmtree(root / "b")
    shutil.rmtree(root / "c")
    with pytest.raises(UserError, match=r"expected at least 2 class sub-folders holding images .* found 1; empty: `.*/d`"):
        load_frames_data(_folders_cfg(root), tmp_path / "run2")


def test_empty_class_folder_training_continues(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_jpeg_folders(tmp_path / "train", classes=("a", "b"), per_class=6, size=24)
    (root / "c" / "nested").mkdir(parents=True)
    code, out, err = _cli(capsys, "train", SMOKE / "frames.yaml", "--set", "data.source=folders", "--set",
                          f"data.train_dir={root}", "--set", "tracking.enabled=false", "--set", "export.enabled=false",
                          "--set", "train.epochs=1")
    assert code == 0, err
    assert f"warning: data.train_dir `{root}`: class folder `{root / 'c'}` holds no images" in err


def test_autoencoder_empty_sub_folder_is_warned_about(tmp_path, capsys):
    root = write_jpeg_folders(tmp_path / "good", classes=("day", "night"), per_class=5, size=24)
    (root / "dusk").mkdir()
    data = load_autoencoder_data(_folders_cfg(root, "autoencoder.yaml"), tmp_path / "run")
    assert f"folder `{root / 'dusk'}` holds no images" in capsys.readouterr().err
    assert data.counts["train_frames"] + data.counts["validation_frames"] == 10


# --------------------------------------------------------------------------- 13. damaged exports


def _truncate(path: Path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "saved_model.pb truncated": (lambda d: _truncate(d / "saved_model.pb"), "saved_model.pb", "truncated or damaged"),
    "saved_model.pb empty": (lambda d: _truncate(d / "saved_model.pb", 0), "saved_model.pb", "holds no MetaGraph"),
    "saved_model.pb missing": (lambda d: (d / "saved_model.pb").unlink(), "saved_model.pb", "missing"),
    "variables data truncated": (lambda d: _truncate(d / DATA), DATA, "truncated or damaged"),
    "variables data corrupt": (lambda d: _flip(d / DATA), DATA, "Checksum does not match"),
    "variables data missing": (lambda d: (d / DATA).unlink(), DATA, "missing"),
    "variables.index missing": (lambda d: (d / "variables/variables.index").unlink(), "variables/variables.index", "missing"),
    "variables.index truncated": (lambda d: _truncate(d / "variables/variables.index"), "variables/variables.index", "damaged"),
    "variables folder missing": (lambda d: shutil.rmtree(d / "variables"), "variables/variables.index", "missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_export_names_the_damaged_file(frames_export, image, tmp_path, capsys, damage):
    damage_fn, damaged_file, words = DAMAGE[damage]
    export_dir = _copy(frames_export, tmp_path)
    damage_fn(export_dir)
    err = _user_error(capsys, "predict", export_dir, image)
    assert f"`{export_dir / damaged_file}`: " in err and words in err, err


def test_damaged_newest_version_points_to_the_others(frames_export, image, tmp_path, capsys):
    export_dir = _copy(frames_export, tmp_path)
    (export_dir.parent / "2").mkdir()  # a version folder left empty (a copy that stopped, a crash of another tool)
    err = _user_error(capsys, "predict", export_dir.parent, image)
    assert f"`{export_dir.parent / '2' / 'saved_model.pb'}`: missing" in err and "other versions beside it: 1" in err


def test_damaged_export_as_a_user_runs_it(frames_export, image, tmp_path):
    """A child process: exit 2, the file named, no traceback (TF's own loader raises several error types)."""
    export_dir = _copy(frames_export, tmp_path)
    _truncate(export_dir / "saved_model.pb", 0.3)
    result = run_cli("predict", export_dir.parent, image, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"reelml predict: error: `{export_dir / 'saved_model.pb'}`: truncated or damaged" in result.stderr


def test_damaged_fingerprint_is_one_warning_not_a_traceback(frames_export, image, tmp_path):
    """TF loads an export whose fingerprint.pb is damaged, but logs a traceback: one warning line instead."""
    export_dir = _copy(frames_export, tmp_path)
    _truncate(export_dir / "fingerprint.pb")
    result = run_cli("predict", export_dir, image, cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"warning: `{export_dir / 'fingerprint.pb'}`: damaged, ignored" in result.stderr
    assert result.stdout.count("\n") == 2  # header and the one image


def test_saved_model_of_another_export_is_refused(frames_export, rec_export, image, tmp_path, capsys):
    export_dir = _copy(frames_export, tmp_path)
    shutil.rmtree(export_dir / "variables")
    shutil.copytree(rec_export / "variables", export_dir / "variables")
    shutil.copy(rec_export / "saved_model.pb", export_dir / "saved_model.pb")
    err = _user_error(capsys, "predict", export_dir, image)
    # (its first signature is also `serving_default`, as every export's is)
    assert f"`{export_dir / 'saved_model.pb'}`: has no signature 'classify_pixels', which its assets.extra/reelml.json lists" in err


# --------------------------------------------------------------------------- 14. raw signatures


def _shapes(outputs):
    return {k: tuple(v.shape) for k, v in outputs.items()}


def test_frames_signatures_take_an_empty_batch(frames_export):
    loaded = tf.saved_model.load(str(frames_export))
    n = len(json.loads((frames_export / "assets.extra" / "reelml.json").read_text())["class_names"])
    want = {"label": (0,), "class_id": (0,), "confidence": (0,), "probabilities": (0, n)}
    assert _shapes(loaded.signatures["serving_default"](images=tf.constant([], tf.string))) == want
    assert _shapes(loaded.signatures["classify_pixels"](pixels=tf.zeros([0, 20, 30, 3], tf.uint8))) == want
    assert _shapes(loaded.signatures["classify_pixels"](pixels=tf.zeros([0, 0, 0, 3], tf.uint8))) == want
    # and a batch of one still answers as before
    one = loaded.signatures["classify_pixels"](pixels=tf.zeros([1, 20, 30, 3], tf.uint8))
    assert _shapes(one)["probabilities"] == (1, n)


def test_frames_pixels_of_the_wrong_shape_name_the_expected_shape(frames_export):
    loaded = tf.saved_model.load(str(frames_export))
    for shape in ([1, 8, 8, 4], [1, 8, 8]):
        pattern = rf"Shape of tensor pixels \[{','.join(map(str, shape))}\] is not compatible with expected shape \[\?,\?,\?,3\]"
        with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
            loaded.signatures["classify_pixels"](pixels=tf.zeros(shape, tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor images \[1,1\] is not compatible with expected shape \[\?\]"):
        loaded.signatures["serving_default"](images=tf.constant([[b"x"]]))


def test_autoencoder_signatures_take_an_empty_batch(autoencoder_export, table_export):
    loaded = tf.saved_model.load(str(autoencoder_export))
    meta = json.loads((autoencoder_export / "assets.extra" / "reelml.json").read_text())
    size, code = meta["input_shape"][0], meta["code_size"]
    images = tf.constant([], tf.string)
    assert _shapes(loaded.signatures["is_anomaly"](images=images)) == {"is_anomaly": (0,), "score": (0,), "threshold": (0,)}
    assert _shapes(loaded.signatures["anomaly_score"](images=images)) == {"score": (0,), "reconstruction_error": (0,)}
    assert _shapes(loaded.signatures["encode"](images=images)) == {"embedding": (0, code)}
    assert _shapes(loaded.signatures["reconstruct"](images=images)) == {"reconstruction": (0, size, size, 3)}
    every = _shapes(loaded.signatures["analyse_pixels"](pixels=tf.zeros([0, 40, 50, 3], tf.uint8)))
    assert every["embedding"] == (0, code) and every["reconstruction"] == (0, size, size, 3) and every["score"] == (0,)
    assert _shapes(loaded.signatures["analyse_pixels"](pixels=tf.zeros([0, 0, 0, 3], tf.uint8)))["score"] == (0,)

    table = tf.saved_model.load(str(table_export))
    features = len(json.loads((table_export / "assets.extra" / "reelml.json").read_text())["feature_columns"])
    assert _shapes(table.signatures["reconstruct"](features=tf.zeros([0, features]))) == {"reconstruction": (0, features)}
    assert _shapes(table.signatures["is_anomaly"](features=tf.zeros([0, features])))["score"] == (0,)


def _generate(loaded, prompts, temperature, max_tokens=20, top_k=0, seed=3):
    rows = [len(prompts)]  # every input per row
    return loaded.signatures["generate"](prompt=tf.constant(prompts, tf.string),
                                         max_tokens=tf.fill(rows, tf.constant(max_tokens, tf.int32)),
                                         temperature=tf.fill(rows, tf.constant(temperature, tf.float32)),
                                         top_k=tf.fill(rows, tf.constant(top_k, tf.int32)),
                                         seed=tf.fill(rows, tf.constant(seed, tf.int64)))


def test_dialogue_signatures_take_an_empty_batch(dialogue_export):
    loaded = tf.saved_model.load(str(dialogue_export))
    assert _shapes(_generate(loaded, [], 0.8)) == {"text": (0,), "num_tokens": (0,), "unknown_tokens": (0,)}
    assert _shapes(_generate(loaded, [], 0.8, max_tokens=0)) == {"text": (0,), "num_tokens": (0,), "unknown_tokens": (0,)}
    out = loaded.signatures["next_token"](text=tf.constant([], tf.string), k=tf.constant([3]))
    assert _shapes(out) == {"token": (0, 3), "probability": (0, 3), "unknown_tokens": (0,)}


def test_recommender_signatures_take_an_empty_batch_and_any_k(rec_export):
    loaded = tf.saved_model.load(str(rec_export))
    none = tf.constant([], tf.string)
    assert _shapes(loaded.signatures["recommend"](user_id=none, k=tf.constant([5]))) == {
        "item_id": (0, 5), "title": (0, 5), "score": (0, 5), "known_user": (0,)}
    assert _shapes(loaded.signatures["score"](user_id=none, item_id=none)) == {"score": (0,), "known_user": (0,), "known_item": (0,)}
    assert _shapes(loaded.signatures["similar_items"](item_id=none, k=tf.constant([5])))["item_id"] == (0, 5)
    # a negative k asks for nothing (it used to fail inside top_k)
    assert _shapes(loaded.signatures["recommend"](user_id=tf.constant(["x"]), k=tf.constant([-1])))["item_id"] == (1, 0)
    assert _shapes(loaded.signatures["similar_items"](item_id=tf.constant(["x"]), k=tf.constant([-3])))["item_id"] == (1, 0)


def test_generate_clamps_a_non_finite_or_negative_temperature(dialogue_export):
    """Negative and NaN temperatures read as 0 (the likeliest token), +inf as the largest allowed (10): the unknown
    token, masked by a large negative logit, stays out of reach (at +inf every token used to be equally likely)."""
    loaded = tf.saved_model.load(str(dialogue_export))
    prompts = ["ROMEO:", "", "JULIET:", "Thou"]

    def texts(temperature, **kw):
        return [t.decode() for t in _generate(loaded, prompts, temperature, max_tokens=250, **kw)["text"].numpy()]

    greedy = texts(0.0)
    assert texts(float("nan")) == greedy and texts(-1.0) == greedy and texts(float("-inf")) == greedy
    hottest = texts(10.0)
    for temperature in (float("inf"), 1e30, 11.0):
        got = texts(temperature)
        assert got == hottest and not any("[UNK]" in t for t in got), temperature
    assert texts(float("inf"), top_k=5) == texts(10.0, top_k=5)


# --------------------------------------------------------------------------- 15. the serving hint


def test_serving_hint_binds_localhost(tmp_path, capsys):
    cfg = load_config(SMOKE / "frames.yaml")
    result = types.SimpleNamespace(test_metrics={"test_accuracy": 0.5}, run_id=None, tracking_uri=None, run_dir=tmp_path / "run",
                                   export_dir=tmp_path / "my exports" / cfg.name / "1")
    _print_summary(cfg, result)
    out = capsys.readouterr().out
    serve = next(line for line in out.splitlines() if "docker run" in line)
    assert "docker run -p 127.0.0.1:8501:8501 -v " in serve and " -p 8501:8501" not in serve
    assert f"'{tmp_path / 'my exports' / cfg.name}:/models/{cfg.name}'" in serve  # a path with a space, quoted
    readme = [line for line in (REPO / "README.md").read_text().splitlines() if "docker run" in line]
    assert readme and all("-p 127.0.0.1:8501:8501" in line for line in readme), readme


# --------------------------------------------------------------------------- reelml predict: bad options and inputs


def _write_video(path, seconds=2, fps=5, size=(32, 24)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            pixels = np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frames_predict_bad_options_exit_2_naming_the_flag(frames_export, image, tmp_path, capsys):
    video = _write_video(tmp_path / "clip.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    cases = [
        ((tmp_path / "no-export", image), f"`{tmp_path / 'no-export'}`: not a SavedModel export"),
        ((tmp_path / "empty", image), f"`{tmp_path / 'empty'}`: not a SavedModel export"),  # a folder with no versions
        ((frames_export, tmp_path / "missing.jpg"), f"input `{tmp_path / 'missing.jpg'}`: no such file or folder"),
        ((frames_export, video, "--every-seconds", "0"), "--every-seconds must be > 0"),
        ((frames_export, video, "--every-seconds", "-2"), "(got --every-seconds -2.0)"),
        ((frames_export, video, "--every-seconds", "nan"), "(got --every-seconds nan)"),
        ((frames_export, video, "--every-frames", "0"), "(got --every-frames 0)"),
        ((frames_export, image, "--batch-size", "0"), "--batch-size 0: expected at least 1"),
        ((frames_export, image, "--top-k", "-1"), "--top-k -1: expected 0 or more"),
        ((frames_export, image, "-o", tmp_path / "nowhere" / "out.csv"), f"folder `{tmp_path / 'nowhere'}` does not exist"),
        ((frames_export, image, "-o", tmp_path / "empty"), f"--output `{tmp_path / 'empty'}`: is a folder"),
        ((frames_export, image, "--prompt", "ROMEO:"), "--prompt: not an option of a frames export"),
        ((frames_export, image, "--temperature", "0.5"), "--temperature: not an option of a frames export"),
        ((frames_export, image, "--next"), "--next: not an option of a frames export"),
        ((frames_export, image, "--max-tokens", "-1"), "--max-tokens: not an option of a frames export"),
        ((frames_export, image, "--user", "u1"), f"--user: not an option of a frames export (`{frames_export}`); it is for "
         "recommender exports"),
        ((frames_export, image, "--embed", tmp_path / "e.npy"), "--embed: not an option of a frames export"),
        ((frames_export, tmp_path / "empty"), f"skipped {tmp_path / 'empty'}: no image (.jpg"),  # a folder without frames
    ]
    _all_user_errors(capsys, cases)


def test_corrupt_video_alone_is_an_error_and_among_good_inputs_is_skipped(frames_export, image, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing a decoder wants")
    out = tmp_path / "out.csv"
    err = _user_error(capsys, "predict", frames_export, bad, "-o", out)
    assert f"skipped {bad}: video could not be decoded" in err and "none of the 1 input(s) could be read" in err
    assert not out.exists()  # nothing predicted: no empty file left behind

    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"\xff\xd8 not a jpeg")
    code, stdout, err = _cli(capsys, "predict", frames_export, bad, unreadable, image)
    assert code == 0, err
    assert f"skipped {bad}: video could not be decoded" in err and f"skipped {unreadable}: not a readable" in err
    assert "1 prediction(s)" in err and "2 input(s) skipped" in err and str(image) in stdout


def test_autoencoder_predict_bad_options(autoencoder_export, table_export, image, tmp_path, capsys):
    cases = [
        ((autoencoder_export, image, "--embed", tmp_path / "e.txt"), f"--embed `{tmp_path / 'e.txt'}`: expected a .parquet, .npy, .csv"),
        ((autoencoder_export, image, "--embed", tmp_path / "nowhere" / "e.npy"), f"folder `{tmp_path / 'nowhere'}` does not exist"),
        ((autoencoder_export, image, "--prompt", "x"), "--prompt: not an option of an autoencoder export"),
        ((autoencoder_export, image, "--batch-size", "-4"), "--batch-size -4: expected at least 1"),
        ((table_export, tmp_path / "rows.csv", "--every-seconds", "1"), "--every-seconds: this export scores feature rows"),
        ((table_export, tmp_path / "missing.csv"), f"input `{tmp_path / 'missing.csv'}`: file not found"),
    ]
    _all_user_errors(capsys, cases)


def test_recommender_predict_bad_options_and_unknown_user(rec_export, tmp_path, capsys):
    (tmp_path / "users.bin").write_bytes(b"\xff\xfe\x00\x01binary")
    cases = [
        (("--user", "x", "-k", "0"), "-k 0: expected at least 1"),
        (("--user", "x", "--batch-size", "0"), "--batch-size 0: expected at least 1"),
        (("--users-file", tmp_path / "nobody.txt"), f"--users-file `{tmp_path / 'nobody.txt'}`: file not found"),
        (("--users-file", tmp_path / "users.bin"), f"--users-file `{tmp_path / 'users.bin'}`: not UTF-8 text"),
        (("--similar-to", "no-such-item"), "skipped no-such-item: unknown item ID"),
        (("--user", "x", "--top-k", "3"), "--top-k: not an option of a recommender export"),
        (("--user", "x", "--prompt", "hi"), "--prompt: not an option of a recommender export"),
        ((tmp_path / "views.csv",), "a recommender export takes --user, --users-file or --similar-to"),
    ]
    _all_user_errors(capsys, [((rec_export, *args), message) for args, message in cases])

    # Documented: an unknown user gets the most popular items.
    code, out, err = _cli(capsys, "predict", rec_export, "--user", "nobody-at-all", "-k", "4", "--format", "jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and all(r["known_user"] is False for r in rows) and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert "user nobody-at-all: unknown to the model; most popular items instead" in err

    code, out, err = _cli(capsys, "predict", rec_export, "--user", "x", "-k", str(2**40), "--format", "jsonl")
    assert code == 0, err  # -k beyond the catalogue: the whole catalogue
    assert len(out.splitlines()) == json.loads((rec_export / "assets.extra" / "reelml.json").read_text())["num_items"]


def test_dialogue_predict_bad_options(dialogue_export, tmp_path, capsys):
    cases = [
        (("--prompt", "a", "--max-tokens", "-1"), "--max-tokens -1: expected 0 or more"),
        (("--prompt", "a", "--temperature", "nan"), "--temperature nan: expected a number from 0"),
        (("--prompt", "a", "--temperature", "11"), "--temperature 11.0: expected a number from 0 (always the likeliest token) to 10"),
        (("--prompt", "a", "--seed", str(2**64)), f"--seed {2**64}: expected an integer from"),
        (("--prompt", "a", "--next", "-k", "0"), "-k 0: expected at least 1"),
        (("--prompt", "a", "--user", "u1"), "--user: not an option of a dialogue export"),
        (("--prompt", "a", "--every-seconds", "1"), "--every-seconds: not an option of a dialogue export"),
        (("--prompt", "a", "--anomalies"), "--anomalies: not an option of a dialogue export"),
        (("--prompt", "a", "--batch-size", "0"), "--batch-size 0: expected at least 1"),
    ]
    _all_user_errors(capsys, [((dialogue_export, *args), message) for args, message in cases])

    # Bytes that are not UTF-8 on the command line (they arrive as surrogates) are read, not a crash.
    code, out, err = _cli(capsys, "predict", dialogue_export, "--prompt", "ROM\udcffEO", "--seed", "1", "--max-tokens", "5",
                          "--format", "jsonl")
    assert code == 0, err
    row = json.loads(out)
    assert row["prompt"] == "ROM\ufffdEO" and row["tokens"] == 5
    # -k far beyond the vocabulary: every token once
    code, out, err = _cli(capsys, "predict", dialogue_export, "--prompt", "a", "--next", "-k", str(2**40), "--format", "jsonl")
    assert code == 0 and len(out.splitlines()) == json.loads(
        (dialogue_export / "assets.extra" / "reelml.json").read_text())["vocab_size"] - 1
