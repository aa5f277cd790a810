"""The autoencoder's contracts: shapes, the calibrated threshold inside the export, serving without reelml,
inputs of the wrong size or type, `reelml predict --embed / --anomalies` over frames, video and tables."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models.autoencoder import build_conv_autoencoder, build_dense_autoencoder
from training import export as export_lib
from training.cli import main as cli_main
from training.config import load_config, validate
from training.errors import ConfigError, UserError
from training.train import train

from conftest import CONFIGS, SHARED_DATA, WITHOUT_REELML, run_cli, smoke_overrides


def _train_in(workdir, config, overrides):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = load_config(CONFIGS / "smoke" / config, overrides + [f"tracking.uri=sqlite:///{workdir}/mlflow.db"])
        return cfg, train(cfg)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def frames_run(sample_frames, tmp_path_factory):
    """A smoke conv autoencoder on the sample frames, its threshold at the 90th percentile."""
    workdir = tmp_path_factory.mktemp("ae-frames")
    cfg, result = _train_in(workdir, "autoencoder.yaml", smoke_overrides(sample_frames, workdir)[:1] + [
        "anomaly.threshold_percentile=90", "data.validation_split=0.25"])
    return cfg, workdir, workdir / result.export_dir


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A smoke dense autoencoder on a CSV table with an ID column."""
    workdir = tmp_path_factory.mktemp("ae-table")
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(300, 2))
    features = np.concatenate([factors, factors ** 2, factors[:, :1] * factors[:, 1:]], axis=1) + rng.normal(0, 0.05, (300, 5))
    df = pd.DataFrame(features, columns=[f"x{i}" for i in range(5)])
    df.insert(0, "shot", [f"s{i}" for i in range(300)])
    df.to_csv(workdir / "shots.csv", index=False)
    np.save(workdir / "shots.npy", features.astype(np.float32))
    cfg, result = _train_in(workdir, "autoencoder_dense.yaml", [
        "data.source=table", f"data.path={workdir / 'shots.csv'}", "data.id_column=shot", "model.code_size=2"])
    return cfg, workdir, workdir / result.export_dir


def _cli(*args, capsys):
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- models


def test_conv_autoencoder_shapes_and_denoising_noise_only_in_training():
    import keras

    model = build_conv_autoencoder((32, 32, 3), code_size=16, filters=(8, 16), convs_per_block=1, noise_stddev=0.1, seed=0)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert model(x).shape == (2, 32, 32, 3)
    assert model.get_layer("encoder")(x).shape == (2, 16)
    assert model.get_layer("decoder")(keras.ops.zeros((2, 16))).shape == (2, 32, 32, 3)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* len\\(filters\\) = 4"):
        build_conv_autoencoder((30, 30, 3), filters=(8, 16))


def test_training_frames_are_mirrored_and_shifted_each_their_own_way_and_again_on_resume():
    import tensorflow as tf

    from training.epochs import set_epoch
    from training.tasks.autoencoder.data import _to_pairs

    frames = np.random.default_rng(0).integers(0, 256, (8, 20, 20, 3)).astype(np.float32)
    pairs = _to_pairs(tf.data.Dataset.from_tensor_slices((frames, np.zeros(8))).batch(4), flip=True, shift=0.15, seed=1)

    def epoch(n):
        set_epoch(n)
        return [x.numpy() for x, _ in pairs]

    first, again, second = epoch(0), epoch(0), epoch(1)
    padded = np.pad(frames / 255.0, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")  # 15% of 20 px: up to 3 px
    moves = []
    for b, batch in enumerate(first):
        for i, x in enumerate(batch):
            source = padded[4 * b + i]
            found = [(dy, dx, m) for dy in range(7) for dx in range(7) for m in (False, True)
                     if np.allclose((x[:, ::-1] if m else x), source[dy:dy + 20, dx:dx + 20], atol=1e-5)]
            assert found, "each training frame is an exact shifted (and maybe mirrored) copy"
            moves.append(found[0])
    assert len(set(moves)) > 4  # frames move each their own way, batch after batch
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # an epoch redone after a restart: the same frames
    assert not np.array_equal(first[0], second[0])  # a new epoch: new moves


def test_zoom_crops_a_square_of_the_configured_size_anywhere_and_resizes_it_back():
    import tensorflow as tf

    from training.epochs import set_epoch
    from training.tasks.autoencoder.data import _to_pairs

    # Channel 0 ramps from 0 to 1 left to right, channel 1 top to bottom: a crop resized back is a ramp again,
    # whose slope is the crop's side and whose start is the crop's corner.
    ramp = np.linspace(0.0, 255.0, 32, dtype=np.float32)
    frame = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.zeros((32, 32), np.float32)], -1)
    pairs = _to_pairs(tf.data.Dataset.from_tensor_slices((np.repeat(frame[None], 16, 0), np.zeros(16))).batch(8),
                      zoom=0.3, seed=3)
    set_epoch(0)
    batches = [(x.numpy(), y.numpy()) for x, y in pairs]
    sides = []
    for x, y in batches:
        assert np.array_equal(x, y) and x.shape == (8, 32, 32, 3)
        for f in x:
            side_x, side_y = f[0, -1, 0] - f[0, 0, 0], f[-1, 0, 1] - f[0, 0, 1]
            assert side_x == pytest.approx(side_y, abs=1e-5)  # square: the aspect ratio is kept
            assert 0.7 - 1e-5 <= side_x <= 1.0 + 1e-5
            assert 0.0 <= f[0, 0, 0] <= 1.0 - side_x + 1e-5 and 0.0 <= f[0, 0, 1] <= 1.0 - side_y + 1e-5  # inside the frame
            np.testing.assert_allclose(np.diff(f[..., 0], axis=1), side_x / 31, atol=1e-5)  # evenly resized back
            sides.append(side_x)
    assert np.ptp(sides) > 0.1  # each frame its own zoom


def test_seed_autoencoder_is_dense_relu_relu_sigmoid_with_exact_parameters():
    cfg = load_config(CONFIGS / "seed" / "autoencoder.yaml")
    model = build_dense_autoencoder((32, 32, 3), code_size=64, hidden_units=(), decoder_units=(64,),
                                    code_activation="relu", output_activation="sigmoid")
    assert (cfg.model.hidden_units, cfg.model.decoder_units, cfg.model.code_activation) == ([], [64], "relu")
    dense = [layer for part in ("encoder", "decoder") for layer in model.get_layer(part).layers if hasattr(layer, "units")]
    assert [(d.units, d.activation.__name__) for d in dense] == [(64, "relu"), (64, "relu"), (3072, "sigmoid")]
    assert model.count_params() == (3072 * 64 + 64) + (64 * 64 + 64) + (64 * 3072 + 3072)
    assert build_dense_autoencoder((5,), code_size=2)(np.zeros((3, 5), np.float32)).shape == (3, 5)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, message", [
    ({"data": {"source": "sample_table"}, "model": {"name": "conv_autoencoder"}}, "`conv_autoencoder` takes frames"),
    ({"data": {"validation_split": 0.0}}, "the anomaly threshold is calibrated on validation data"),
    ({"data": {"image_size": 60}}, "expected a multiple of 16, got 60"),
    ({"data": {"source": "table"}, "model": {"name": "dense_autoencoder"}}, "`data.path` is required"),
    ({"anomaly": {"threshold_percentile": 100}}, "anomaly.threshold_percentile"),
])
def test_config_mistakes_are_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)").replace("*", "\\*")):
        validate({"name": "x", "task": "autoencoder", **changes})


# --------------------------------------------------------------------------- the export


def _validation_pixels(cfg, workdir):
    from training.tasks.autoencoder.data import load_data

    data = load_data(cfg, workdir / "runs" / cfg.name)
    return np.concatenate([np.round(x.numpy() * 255).astype(np.uint8) for x, _ in data.validation])


def test_stored_threshold_is_the_configured_percentile_of_validation_scores(frames_run):
    import tensorflow as tf

    cfg, workdir, export_dir = frames_run
    loaded = tf.saved_model.load(str(export_dir))
    pixels = _validation_pixels(cfg, workdir)
    out = loaded.signatures["analyse_pixels"](pixels=tf.constant(pixels))
    threshold = float(out["threshold"].numpy()[0])
    assert threshold == pytest.approx(np.percentile(out["score"].numpy(), 90), rel=1e-4)
    assert np.mean(out["is_anomaly"].numpy()) == pytest.approx(0.1, abs=1 / len(pixels) + 1e-9)
    meta = export_lib.read_metadata(export_dir)
    assert meta["threshold_percentile"] == 90 and meta["input"] == "frames"
    assert next(iter(meta["signatures"])) == "is_anomaly"


def test_export_serves_bytes_of_any_size_without_reelml_and_refuses_wrong_types(frames_run, sample_frames, tmp_path):
    import tensorflow as tf

    cfg, _, export_dir = frames_run
    size, k = cfg.data.image_size, cfg.model.code_size
    frame = sample_frames / "test" / "exterior" / "exterior_0000.jpg"
    wide = tf.io.encode_png(tf.image.resize(tf.io.decode_jpeg(frame.read_bytes()), (30, 70)).numpy().astype(np.uint8)).numpy()
    (tmp_path / "wide.png").write_bytes(wide)
    script = WITHOUT_REELML + f"""import numpy as np, tensorflow as tf
m = tf.saved_model.load({str(export_dir)!r})
images = tf.constant([open({str(frame)!r}, 'rb').read(), open({str(tmp_path / 'wide.png')!r}, 'rb').read()])
out = {{}}
for name in ('serving_default', 'is_anomaly', 'anomaly_score', 'encode', 'reconstruct'):
    for key, value in m.signatures[name](images=images).items():
        out[name + '.' + key] = [list(value.shape), value.dtype.name]
errors = []
for call in (lambda: m.signatures['analyse_pixels'](pixels=tf.zeros([1, 8, 8, 3], tf.float32)),
             lambda: m.signatures['encode'](images=tf.constant([1.0])),
             lambda: m.signatures['analyse_pixels'](pixels=tf.zeros([1, 8, 8], tf.uint8))):
    try:
        call()
        errors.append('accepted')
    except Exception as e:
        errors.append(type(e).__name__ + ': ' + str(e)[:300])
print(json.dumps({{'out': out, 'errors': errors}}))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, check=False,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    out = result["out"]
    assert out["serving_default.is_anomaly"] == [[2], "bool"] and out["is_anomaly.threshold"] == [[2], "float32"]
    assert out["anomaly_score.score"] == [[2], "float32"] and out["anomaly_score.reconstruction_error"] == [[2], "float32"]
    assert out["encode.embedding"] == [[2, k], "float32"]
    assert out["reconstruct.reconstruction"] == [[2, size, size, 3], "float32"]  # the 70x30 frame was resized
    float_pixels, number_images, no_channels = result["errors"]
    assert "accepted" not in result["errors"], result["errors"]
    assert "expected to be a uint8 tensor but is a float tensor" in float_pixels, float_pixels
    assert "expected to be a string tensor but is a float tensor" in number_images, number_images
    assert "Shape of tensor pixels [1,8,8] is not compatible with expected shape [?,?,?,3]" in no_channels, no_channels


def test_table_export_reconstructs_in_the_table_units_and_checks_the_feature_count(table_run):
    import tensorflow as tf

    _, workdir, export_dir = table_run
    loaded = tf.saved_model.load(str(export_dir))
    rows = pd.read_csv(workdir / "shots.csv").iloc[:8, 1:].to_numpy(np.float32)
    out = loaded.signatures["reconstruct"](features=tf.constant(rows))["reconstruction"].numpy()
    assert out.shape == (8, 5) and np.abs(out - rows).mean() < np.abs(rows).mean() * 5  # table units, not standardised
    assert loaded.signatures["encode"](features=tf.constant(rows))["embedding"].shape == (8, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor features \[8,4\] is not compatible with expected shape \[\?,5\]"):
        loaded.signatures["anomaly_score"](features=tf.constant(rows[:, :4]))
    meta = export_lib.read_metadata(export_dir)
    assert meta["feature_columns"] == [f"x{i}" for i in range(5)] and meta["id_column"] == "shot"


# --------------------------------------------------------------------------- predict


def test_predict_embeds_frames_and_video_and_lists_anomalies(frames_run, sample_frames, tmp_path, capsys):
    from test_predict import write_video

    cfg, _, export_dir = frames_run
    folder = sample_frames / "test" / "title_card"
    video = write_video(tmp_path / "clip.mp4", seconds=2, fps=5)
    code, out, err = _cli("predict", export_dir.parent, folder, video, "--embed", tmp_path / "e.parquet", capsys=capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    n_images = len(list(folder.glob("*.jpg")))
    assert len(rows) == n_images + 2 and [r["timecode"] for r in rows[-2:]] == ["00:00:00:00", "00:00:01:00"]
    assert [r["seconds"] for r in rows[-2:]] == ["0.0", "1.0"]
    embedded = pd.read_parquet(tmp_path / "e.parquet")
    assert list(embedded["source"]) == [r["source"] for r in rows]
    assert [c for c in embedded.columns if c.startswith("e")] == [f"e{j}" for j in range(cfg.model.code_size)]
    flagged = [r for r in rows if r["is_anomaly"] == "True"]
    assert f"{len(flagged)} of {len(rows)} input(s) flagged" in err

    code, out, err = _cli("predict", export_dir.parent, folder, video, "--anomalies", "--embed", tmp_path / "e.npy",
                          "--format", "jsonl", capsys=capsys)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in listed] == [r["source"] for r in flagged] and all(r["is_anomaly"] for r in listed)
    assert np.load(tmp_path / "e.npy").shape == (len(rows), cfg.model.code_size)


def test_predict_scores_tables_by_csv_and_npy(table_run, tmp_path, capsys):
    _, workdir, export_dir = table_run
    code, out, err = _cli("predict", export_dir, workdir / "shots.csv", workdir / "shots.npy", "--embed", tmp_path / "e.csv",
                          capsys=capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 600 and rows[0]["id"] == "s0" and rows[0]["row"] == "1" and rows[300]["id"] == "0"
    assert [float(r["score"]) for r in rows[:300]] == pytest.approx([float(r["score"]) for r in rows[300:]], rel=1e-5)
    assert list(pd.read_csv(tmp_path / "e.csv").columns) == ["source", "row", "id", "e0", "e1"]


def test_bad_predict_inputs_exit_2_naming_the_value(table_run, frames_run, tmp_path, capsys):
    _, workdir, table_export = table_run
    frames_export = frames_run[2]
    (tmp_path / "text.csv").write_text("shot,x0,x1,x2,x3,x4\ns0,1,2,oops,4,5\n")
    (tmp_path / "gap.csv").write_text("shot,x0,x1,x2,x3,x4\ns0,1,2,3,4,5\ns1,1,,3,4,5\n")
    (tmp_path / "short.csv").write_text("shot,x0,x1\ns0,1,2\n")
    np.save(tmp_path / "wide.npy", np.zeros((3, 7), np.float32))
    cases = [
        ((table_export, tmp_path / "text.csv"), "column `x2` holds non-numeric values, e.g. 'oops'"),
        ((table_export, tmp_path / "gap.csv"), "row 2, column `x1`: missing or infinite value"),
        ((table_export, tmp_path / "short.csv"), "no column(s) ['x2', 'x3', 'x4']"),
        ((table_export, tmp_path / "wide.npy"), "expected 5 features named by position, got 7"),
        ((table_export, workdir / "runs"), "expected a .csv, .parquet, .pq, .npy file"),
        ((table_export, workdir / "shots.csv", "--embed", tmp_path / "e.txt"), "--embed `"),
        ((frames_export, tmp_path / "missing.jpg"), "no such file or folder"),
        ((frames_export,), "give at least one image file, folder of images or video"),
    ]
    for args, message in cases:
        code, _, err = _cli("predict", *args, capsys=capsys)
        assert code == 2 and message in err, (args, err)


def test_predict_cli_end_to_end(frames_run, sample_frames, tmp_path):
    """As a user runs it: a child process, exit 0, a CSV with the flagged frames."""
    _, _, export_dir = frames_run
    result = run_cli("predict", export_dir.parent, sample_frames / "test" / "interior", "--anomalies", "-o",
                     tmp_path / "flagged.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "input(s) flagged as anomalies" in result.stderr
    assert (tmp_path / "flagged.csv").read_text().startswith("source,frame,timecode,seconds,score,is_anomaly") or \
        (tmp_path / "flagged.csv").read_text() == ""


# --------------------------------------------------------------------------- data


def test_table_reader_names_the_bad_value(tmp_path):
    from training.tasks.autoencoder.tables import read_table

    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(UserError, match=r"expected a 2-D numeric array .* got shape \(2, 2, 2\)"):
        read_table(tmp_path / "cube.npy")
    with pytest.raises(UserError, match="data.path `.*nothing.csv`: file not found"):
        read_table(tmp_path / "nothing.csv")
    (tmp_path / "t.csv").write_text("id,a,b\nx,1,2\ny,3,4\n")
    values, names, ids = read_table(tmp_path / "t.csv", id_column="id")
    assert names == ["a", "b"] and ids == ["x", "y"] and values.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(UserError, match="no column `shot` \\(data.id_column\\)"):
        read_table(tmp_path / "t.csv", id_column="shot")


def test_flat_folder_of_frames_trains(tmp_path, monkeypatch):
    """Good footage is often one flat folder: no class sub-folders needed."""
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    for i in range(12):
        (tmp_path / "frames" / f"f{i}.png").write_bytes(tf.io.encode_png(rng.integers(0, 255, (20, 24, 3), np.uint8)).numpy())
    (tmp_path / "frames" / "broken.jpg").write_bytes(b"not an image")
    cfg = load_config(CONFIGS / "smoke" / "autoencoder.yaml", [
        "data.source=folders", f"data.train_dir={tmp_path / 'frames'}", "data.validation_split=0.25",
        "tracking.enabled=false", "export.enabled=false", "train.epochs=1"])
    from training.tasks.autoencoder.data import load_data

    data = load_data(cfg, tmp_path / "run")
    assert data.counts["train_frames"] + data.counts["validation_frames"] == 12 and data.counts["skipped_frames"] == 1
    x, _ = next(iter(data.train))
    assert x.shape[1:] == (32, 32, 3) and float(np.max(x)) <= 1.0


@pytest.mark.skipif(not (SHARED_DATA / "intel_scenes").is_dir(), reason="../shared/data/intel_scenes is not here")
def test_intel_config_reads_the_scenes():
    cfg = load_config(CONFIGS / "autoencoder_intel.yaml")
    from training.tasks.images import list_images as _list_images

    assert len(_list_images(CONFIGS.parent / cfg.data.train_dir, "data.train_dir")) == 1800
