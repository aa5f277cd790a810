"""Training end to end: smoke fits per config, tracking, resume, bad data, export and reload."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from training import export as export_lib
from training.config import load_config
from training.errors import UserError
from training.train import train

from conftest import CONFIGS, classify_without_reelml, smoke_overrides, write_jpeg_folders

SMOKE_CONFIGS = sorted((CONFIGS / "smoke").rglob("*.yaml"))


def _metric_steps(uri, run_id, key):
    return [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)]


@pytest.mark.parametrize("path", SMOKE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS / "smoke")))
def test_smoke_config_trains_tracks_and_exports(path, sample_frames, workdir):
    task = load_config(path).task
    overrides = smoke_overrides(sample_frames, workdir) if task in ("frames", "autoencoder") else [
        f"tracking.uri=sqlite:///{workdir}/mlflow.db"] + ([f"data.sample_dir={workdir / 'sample'}"] if task == "recommender" else [])
    cfg = load_config(path, overrides)
    result = train(cfg)

    assert len(result.history) == cfg.train.epochs
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    assert result.export_dir.resolve() == workdir / "exports" / cfg.name / "1"
    assert (result.export_dir / "saved_model.pb").exists()
    meta = export_lib.read_metadata(result.export_dir)
    assert meta["run_id"] == result.run_id and meta["task"] == task
    # What each task's test metrics and report must show.
    expected = {
        "frames": (lambda m: len(m["class_names"]) == 5, {"test_accuracy"}, "plots/confusion_matrix.png", "model.filters"),
        "recommender": (lambda m: m["num_items"] == cfg.data.sample_items, {"test_hr_at_10", "test_ndcg_at_10",
                        "test_toppop_hr_at_10", "val_hr_at_10"}, "plots/hit_rate_at_k.png", "model.mlp_layers"),
        "autoencoder": (lambda m: m["code_size"] == cfg.model.code_size, {"test_loss", "anomaly_threshold",
                        "val_anomaly_rate"}, "plots/anomaly_scores.png", "model.code_size"),
        "dialogue": (lambda m: m["level"] == cfg.data.level and m["vocab_size"] > 2, {"val_perplexity",
                     "val_loss_second_half"}, "plots/loss_by_position.png", "model.units"),
    }[task]
    metadata_ok, metric_names, report_plot, model_param = expected
    assert metadata_ok(meta), meta

    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(cfg.train.epochs)
    assert run.data.params[model_param] == str(getattr(cfg.model, model_param.split(".")[1]))
    for tag in ("git.commit", "data.fingerprint", "version.tensorflow", "version.keras", "reelml.config_fingerprint"):
        assert run.data.tags.get(tag), tag
    assert metric_names <= set(run.data.metrics), set(run.data.metrics)
    assert _metric_steps(result.tracking_uri, result.run_id, "loss") == list(range(1, cfg.train.epochs + 1))
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for d in ("plots", "export") for a in client.list_artifacts(result.run_id, d)
    }
    assert {"config.yaml", "plots/learning_curves.png", report_plot, "export/saved_model.pb"} <= artifacts
    assert (workdir / "runs" / cfg.name / "config.yaml").read_text() == cfg.to_yaml()
    assert list((workdir / "runs" / cfg.name / "tensorboard" / "train").iterdir())


def _smoke(sample_frames, workdir, *extra):
    return load_config(CONFIGS / "smoke" / "frames.yaml", smoke_overrides(sample_frames, workdir) + list(extra))


def test_export_reloads_without_reelml_and_matches_the_checkpoint(sample_frames, workdir):
    cfg = _smoke(sample_frames, workdir)
    result = train(cfg)
    from training.train import _restore

    _, data, model, _, _, _ = _restore(cfg)
    pixels = next(iter(data.test))[0].numpy()
    want = np.asarray(model(pixels, training=False))
    got = classify_without_reelml(result.export_dir, pixels, workdir)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_export_check_catches_a_mismatch(sample_frames, workdir):
    import tensorflow as tf

    cfg = _smoke(sample_frames, workdir)
    result = train(cfg)
    from training.train import _restore

    _, data, model, _, _, _ = _restore(cfg)
    pixels = next(iter(data.test))[0].numpy()[:2].astype(np.uint8)
    honest = {"classify_pixels": (lambda p: {"probabilities": model(tf.cast(p, tf.float32), training=False)},
                                  [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])}
    export_lib.verify_in_fresh_process(result.export_dir, honest, {"classify_pixels": {"pixels": pixels}})
    lying = {"classify_pixels": (lambda p: {"probabilities": model(tf.cast(p, tf.float32), training=False) + 0.01}, honest["classify_pixels"][1])}
    with pytest.raises(RuntimeError, match="differs after reload"):
        export_lib.verify_in_fresh_process(result.export_dir, lying, {"classify_pixels": {"pixels": pixels}})


def test_crash_then_same_command_resumes_the_same_run(sample_frames, workdir, monkeypatch):
    from training import tracking

    cfg = _smoke(sample_frames, workdir, "train.epochs=3")
    real_log_epoch = tracking.Tracker.log_epoch

    def crash_after_epoch_2(self, epoch, logs):
        real_log_epoch(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(tracking.Tracker, "log_epoch", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert not (workdir / "exports").exists()
    monkeypatch.setattr(tracking.Tracker, "log_epoch", real_log_epoch)

    result = train(cfg)
    assert len(result.history) == 3
    runs = mlflow.MlflowClient(result.tracking_uri).search_runs([mlflow.get_experiment_by_name("reelml").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result.run_id
    assert _metric_steps(result.tracking_uri, result.run_id, "loss") == [1, 2, 3]
    assert export_lib.versions(workdir / "exports" / cfg.name) == [1]


def test_kill_after_export_before_finish_logs_test_metrics_and_exports_once(sample_frames, workdir, monkeypatch):
    from training import tracking

    cfg = _smoke(sample_frames, workdir)
    real_log_artifacts = tracking.Tracker.log_artifacts

    def killed_after_export(self, directory, artifact_path):
        raise KeyboardInterrupt("simulated kill between the export and the run's end")

    monkeypatch.setattr(tracking.Tracker, "log_artifacts", killed_after_export)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(tracking.Tracker, "log_artifacts", real_log_artifacts)

    result = train(cfg)
    assert _metric_steps(result.tracking_uri, result.run_id, "test_loss") == [0]
    assert _metric_steps(result.tracking_uri, result.run_id, "loss") == [1, 2]
    assert export_lib.versions(workdir / "exports" / cfg.name) == [1]


def test_finished_run_then_same_command_starts_a_new_run(sample_frames, workdir):
    cfg = _smoke(sample_frames, workdir)
    first, second = train(cfg), train(cfg)
    assert first.run_id != second.run_id
    assert export_lib.versions(workdir / "exports" / cfg.name) == [1, 2]


def test_unfinished_run_with_another_config_is_not_resumed_silently(sample_frames, workdir, monkeypatch):
    from training import loop

    cfg = _smoke(sample_frames, workdir, "train.epochs=3")

    def boom(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(loop, "fit", boom)
        train(cfg)
    with pytest.raises(UserError, match=r"different config \(changed: train.epochs: 3 -> 2\)"):
        train(_smoke(sample_frames, workdir))
    assert len(train(_smoke(sample_frames, workdir), fresh=True).history) == 2


def _folders_with_bad_files(root):
    write_jpeg_folders(root / "train")
    (root / "train" / "a" / "garbage.jpg").write_bytes(b"this is not an image")
    good = (root / "train" / "b" / "b0.jpg").read_bytes()
    (root / "train" / "b" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "train" / "c" / "empty.png").write_bytes(b"")
    return root


def test_corrupt_images_are_skipped_and_counted(workdir):
    root = _folders_with_bad_files(workdir / "frames")
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", [
        "data.source=folders", f"data.train_dir={root / 'train'}", "data.validation_split=0.2",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
    ])
    result = train(cfg)
    tags = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert int(tags["data.skipped_frames"]) >= 2  # garbage and empty never decode; a truncated JPEG may
    assert int(tags["data.train_frames"]) + int(tags["data.validation_frames"]) + int(tags["data.skipped_frames"]) == 21


def test_corrupt_images_stop_the_run_when_asked(workdir):
    root = _folders_with_bad_files(workdir / "frames")
    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", [
        "data.source=folders", f"data.train_dir={root / 'train'}", "data.on_bad_file=error", "tracking.enabled=false",
    ])
    with pytest.raises(UserError, match=r"could not be decoded, e.g. `.*(garbage|empty|truncated)"):
        train(cfg)


def test_unreachable_tracking_server_fails_before_training(sample_frames, workdir):
    cfg = _smoke(sample_frames, workdir, "tracking.uri=http://127.0.0.1:9")
    with pytest.raises(UserError, match="MLflow server cannot be reached"):
        train(cfg)
    assert not (workdir / "runs" / cfg.name / "checkpoints").exists()


def test_evaluate_and_export_commands_use_the_checkpoint(sample_frames, workdir):
    from conftest import run_cli

    overrides = [a for o in smoke_overrides(sample_frames, workdir) for a in ("--set", o)]
    trained = run_cli("train", CONFIGS / "smoke" / "frames.yaml", *overrides, cwd=workdir)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Export: exports/frames-smoke/1" in trained.stdout
    evaluated = run_cli("evaluate", CONFIGS / "smoke" / "frames.yaml", *overrides, cwd=workdir)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test_accuracy:" in evaluated.stdout and "val_loss:" in evaluated.stdout
    exported = run_cli("export", CONFIGS / "smoke" / "frames.yaml", *overrides, cwd=workdir)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert export_lib.versions(workdir / "exports" / "frames-smoke") == [1, 2]
    other = run_cli("export", CONFIGS / "smoke" / "frames.yaml", *overrides, "--set", "name=never-trained", cwd=workdir)
    assert other.returncode == 2 and "no checkpoint of run `never-trained`" in other.stderr


def test_mirrored_strategy_over_two_devices_runs_the_same_loop(sample_frames, workdir):
    """Two logical CPUs stand in for two GPUs: the loop, metrics and export work under MirroredStrategy."""
    script = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from training.config import load_config
from training.train import train
cfg = load_config({str(CONFIGS / 'smoke' / 'frames.yaml')!r}, {smoke_overrides(sample_frames, workdir)!r} + ['train.strategy=mirrored'])
r = train(cfg)
import mlflow
tags = mlflow.MlflowClient(r.tracking_uri).get_run(r.run_id).data.tags
print('REPLICAS', tags['hardware.replicas'], 'EPOCHS', len(r.history), 'EXPORT', r.export_dir)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPLICAS 2 EPOCHS 2 EXPORT exports/frames-smoke/1" in proc.stdout


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(sample_frames, workdir, monkeypatch):
    from training.tasks import frames

    real = frames.TASK.make_loss

    def poisoned(cfg, data):
        loss = real(cfg, data)
        return lambda y_true, y_pred: loss(y_true, y_pred) * float("nan")

    monkeypatch.setattr(frames.TASK, "make_loss", poisoned)
    with pytest.raises(UserError, match=r"training loss became nan at step 1.*Lower train.learning_rate"):
        train(_smoke(sample_frames, workdir))
    state = json.loads((workdir / "runs" / "frames-smoke" / "state.json").read_text())
    assert state["status"] == "running"  # resumable, not marked finished
    assert mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(state["run_id"]).info.status == "FAILED"
