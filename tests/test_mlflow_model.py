"""The MLflow model of a run: pyfunc model, registered version, aliases, `models:/` predict, datasets, experiment kind."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import CONFIGS, WITHOUT_REELML, free_port, run_cli

from training.config import load_config
from training.errors import ConfigError
from training.train import train

FRAMES, RECOMMENDER = "frames-smoke", "recommender-smoke"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_frames):
    """One frames run whose `promote_if` holds and one recommender run whose `promote_if` does not, in one folder."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    before = Path.cwd()
    os.chdir(root)
    try:
        frames = train(load_config(CONFIGS / "smoke" / "frames.yaml", [
            f"data.sample_dir={sample_frames.parent}", f"tracking.uri={uri}", "tracking.promote_if=test_accuracy>=0"]))
        recommender = train(load_config(CONFIGS / "smoke" / "recommender.yaml", [
            f"data.sample_dir={root / 'sample'}", f"tracking.uri={uri}", "tracking.promote_if=test_hr_at_10>1.5"]))
    finally:
        os.chdir(before)
    frames, recommender = (dataclasses.replace(r, export_dir=root / r.export_dir) for r in (frames, recommender))
    return {"root": root, "uri": uri, FRAMES: frames, RECOMMENDER: recommender}


def _client(trained):
    return mlflow.MlflowClient(trained["uri"])


def _frame_bytes(sample_frames, n=3):
    return [p.read_bytes() for p in sorted(Path(sample_frames).rglob("*.jpg"))[:n]]


@pytest.mark.parametrize("name", [FRAMES, RECOMMENDER])
def test_run_registers_a_version_tagged_with_its_export_and_test_metrics(trained, name):
    result = trained[name]
    version = _client(trained).get_model_version(name, "1")
    assert version.run_id == result.run_id
    assert version.tags["reelml.export_version"] == result.export_dir.name == "1"
    assert Path(version.tags["reelml.export_path"]) == result.export_dir.resolve()
    test_metrics = {k: v for k, v in result.test_metrics.items() if k.startswith("test_")}
    assert test_metrics
    for key, value in test_metrics.items():
        assert float(version.tags[key]) == pytest.approx(value, rel=1e-5), key
    run = _client(trained).get_run(result.run_id)
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{result.run_id}'")
    assert [m.name for m in logged] == ["model"]


def test_experiment_is_model_training_and_the_run_lists_its_datasets(trained, sample_frames):
    client = _client(trained)
    run = client.get_run(trained[FRAMES].run_id)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    for dataset in inputs.values():
        assert dataset.digest == run.data.tags["data.fingerprint"][:36]
        assert json.loads(dataset.source)["uri"] == str(Path(sample_frames.parent).resolve())


def _in_fresh_process(uri, model_uri, requests):
    """`[(columns, params)]` predicted by the pyfunc model in a `python -I` process that cannot import reelml."""
    script = WITHOUT_REELML + """
import base64, mlflow, numpy as np, pandas as pd
uri, model_uri, requests = json.loads(sys.stdin.read())
mlflow.set_tracking_uri(uri)
model = mlflow.pyfunc.load_model(model_uri)
def plain(v):
    v = np.asarray(v)
    if v.dtype == object:
        return [plain(x) for x in v] if v.ndim else (base64.b64encode(v.item()).decode() if isinstance(v.item(), bytes) else v.item())
    return v.tolist()
out = []
for columns, params in requests:
    columns = {k: [base64.b64decode(x[4:]) if isinstance(x, str) and x.startswith("b64:") else x for x in v]
               for k, v in columns.items()}
    answer = model.predict(pd.DataFrame(columns), params=params)
    out.append({k: plain(v) for k, v in answer.items()})
assert not [m for m in sys.modules if m.split('.')[0] in ('training', 'models', 'reelml')]
print("RESULT" + json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", script], input=json.dumps([uri, model_uri, requests]),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def _plain(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    return value


def _signature_call(export_dir, name, inputs):
    """The export's signature, called in this process, as plain lists (text decoded)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_dir)).signatures[name]
    _, specs = signature.structured_input_signature
    out = signature(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
    result = {}
    for key, value in out.items():
        array = value.numpy()
        result[key] = (np.vectorize(_plain, otypes=[object])(array).tolist() if array.dtype == object else array.tolist())
    return result


def _assert_equal(answer, expected):
    assert set(answer) == set(expected)
    for key in expected:
        if isinstance(np.asarray(expected[key], dtype=object).flat[0], str):
            assert answer[key] == expected[key], key
        else:
            np.testing.assert_allclose(np.asarray(answer[key], dtype=float), np.asarray(expected[key], dtype=float),
                                       rtol=1e-5, atol=1e-6, err_msg=key)


def test_pyfunc_model_loads_without_reelml_and_answers_as_the_export(trained, sample_frames):
    frames_export, rec_export = trained[FRAMES].export_dir, trained[RECOMMENDER].export_dir
    jpegs = _frame_bytes(sample_frames)
    frames_answer = _in_fresh_process(trained["uri"], f"models:/{FRAMES}/1", [
        ({"images": ["b64:" + base64.b64encode(j).decode() for j in jpegs]}, None)])
    _assert_equal(frames_answer[0], _signature_call(frames_export, "serving_default", {"images": jpegs}))

    from training.export import read_metadata

    users = ["u0000", "u0001", "nobody"]
    serving = read_metadata(rec_export)["signatures"]
    requests = [({"user_id": users, "k": [4] * 3}, None),
                ({"user_id": users[:2], "item_id": ["i0000", "i0001"]}, {"signature": "score"})]
    answers = _in_fresh_process(trained["uri"], f"models:/{RECOMMENDER}/1", requests)
    import tensorflow as tf

    default = tf.saved_model.load(str(rec_export)).signatures["serving_default"]
    k_spec = default.structured_input_signature[1]["k"]
    k = np.int32(4) if k_spec.shape.rank == 0 else np.full([3], 4, np.int32)
    _assert_equal(answers[0], _signature_call(rec_export, "serving_default", {"user_id": [u.encode() for u in users], "k": k}))
    _assert_equal(answers[1], _signature_call(rec_export, "score", {"user_id": [b"u0000", b"u0001"],
                                                                   "item_id": [b"i0000", b"i0001"]}))
    assert "score" in serving


def test_promote_if_promotes_when_it_holds_and_not_otherwise(trained):
    client = _client(trained)
    assert str(client.get_model_version_by_alias(FRAMES, "champion").version) == "1"
    assert "champion" not in client.get_registered_model(RECOMMENDER).aliases


def test_promote_sets_an_alias_and_names_what_it_cannot_find(trained):
    env = {"MLFLOW_TRACKING_URI": trained["uri"]}
    done = run_cli("promote", RECOMMENDER, "--alias", "staging", cwd=trained["root"], env=env)
    assert done.returncode == 0, done.stderr
    assert f"models:/{RECOMMENDER}@staging -> version 1" in done.stdout
    assert str(_client(trained).get_model_version_by_alias(RECOMMENDER, "staging").version) == "1"

    done = run_cli("promote", "no-such-model", "--tracking-uri", trained["uri"], cwd=trained["root"])
    assert done.returncode == 2 and "`no-such-model`: no registered model" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("promote", RECOMMENDER, "--version", "7", cwd=trained["root"], env=env)
    assert done.returncode == 2 and "--version 7: model `recommender-smoke` has no such version" in done.stderr, done.stderr
    done = run_cli("predict", f"models:/{RECOMMENDER}@gold", "--user", "u0000", cwd=trained["root"], env=env)
    assert done.returncode == 2 and "has no alias `gold`" in done.stderr, done.stderr


def test_predict_from_the_registry_writes_what_the_export_writes(trained, sample_frames, tmp_path):
    frames = sorted(Path(sample_frames).rglob("*.jpg"))[:4]
    env = {"MLFLOW_TRACKING_URI": trained["uri"]}
    by_alias = run_cli("predict", f"models:/{FRAMES}@champion", *frames, "-o", tmp_path / "alias.csv",
                       cwd=trained["root"], env=env)
    assert by_alias.returncode == 0, by_alias.stderr
    by_dir = run_cli("predict", trained[FRAMES].export_dir.parent, *frames, "-o", tmp_path / "dir.csv", cwd=trained["root"])
    assert by_dir.returncode == 0, by_dir.stderr
    assert (tmp_path / "alias.csv").read_text() == (tmp_path / "dir.csv").read_text()
    assert len((tmp_path / "alias.csv").read_text().splitlines()) == 5

    by_version = run_cli("predict", f"models:/{RECOMMENDER}/1", "--user", "u0000", "-o", tmp_path / "v.csv",
                         cwd=trained["root"], env=env)
    assert by_version.returncode == 0, by_version.stderr
    by_dir = run_cli("predict", trained[RECOMMENDER].export_dir, "--user", "u0000", "-o", tmp_path / "d.csv",
                     cwd=trained["root"])
    assert (tmp_path / "v.csv").read_text() == (tmp_path / "d.csv").read_text()


@pytest.mark.parametrize("condition", ["test_accuracy=>0.8", "accuracy", "test_accuracy>=high"])
def test_promote_if_is_checked_with_the_config(condition):
    with pytest.raises(ConfigError, match=r"key `tracking.promote_if`: got .*expected METRIC OP NUMBER"):
        load_config(CONFIGS / "smoke" / "frames.yaml", [f"tracking.promote_if={condition}"])
    with pytest.raises(ConfigError, match=r"`tracking.promote_if` needs `tracking.register_model: true`"):
        load_config(CONFIGS / "smoke" / "frames.yaml", ["tracking.promote_if=test_accuracy>0.5",
                                                        "tracking.register_model=false"])


def _serve(model_uri, root: Path, env) -> tuple[subprocess.Popen, int]:
    """`mlflow models serve` on a free port of 127.0.0.1; returns once it answers /ping."""
    for attempt in range(3):  # a free port can be taken by another process before the server binds it
        port = free_port()
        with open(root / "serve.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                     "local", "-h", "127.0.0.1", "-p", str(port)], cwd=root, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        return proc, port
            except OSError:
                time.sleep(1)
        _stop(proc)
    raise RuntimeError("mlflow models serve did not start:\n" + (root / "serve.log").read_text()[-3000:])


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)


def test_mlflow_models_serve_answers_as_the_export_without_reelml(trained, sample_frames, tmp_path):
    # Every process of the server (the CLI and its workers) starts with reelml made unimportable.
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(WITHOUT_REELML)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(tmp_path / "block"), MLFLOW_TRACKING_URI=trained["uri"])
    check = subprocess.run([sys.executable, "-c", "import training"], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert "reelml must not be importable here" in check.stderr
    jpegs = _frame_bytes(sample_frames)
    body = {"dataframe_split": {"columns": ["images"], "data": [[base64.b64encode(j).decode()] for j in jpegs]}}
    proc, port = _serve(f"models:/{FRAMES}@champion", tmp_path, env)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.loads(r.read())["predictions"]
    finally:
        _stop(proc)
    _assert_equal(answer, _signature_call(trained[FRAMES].export_dir, "serving_default", {"images": jpegs}))
