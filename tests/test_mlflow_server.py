"""A real `mlflow server` on 127.0.0.1: train against it, then read the run back."""

from __future__ import annotations

import mlflow

from training.config import load_config
from training.train import train

from conftest import CONFIGS, smoke_overrides


def test_training_against_a_real_server(mlflow_server, sample_frames, workdir):
    uri, artifact_root = mlflow_server
    overrides = smoke_overrides(sample_frames, workdir)[:1] + [f"tracking.uri={uri}", "tracking.experiment=server-test"]
    result = train(load_config(CONFIGS / "smoke" / "frames.yaml", overrides))

    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "server-test"
    assert run.data.params["name"] == "frames-smoke"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1, 2]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.tags["data.fingerprint"]
    exported = {a.path for a in client.list_artifacts(result.run_id, "export")}
    assert "export/saved_model.pb" in exported
    assert any(artifact_root.rglob("saved_model.pb")), "artifacts must be stored by the server"
