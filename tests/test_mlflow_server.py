"""A real `mlflow server` on 127.0.0.1: train against it, then read the run back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from training.config import load_config
from training.train import train

from conftest import CONFIGS, smoke_overrides


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + Path(tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri, tmp_path / "artifacts"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


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
