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
from conftest import CONFIGS, WITHOUT_REELML, free_port, run_cli, serve_mlflow, stop_mlflow_server

from training.config import load_config
from training.errors import ConfigError
from training.train import train

FRAMES, AUTOENCODER, DIALOGUE, RECOMMENDER = "frames-smoke", "autoencoder-smoke", "dialogue-smoke", "recommender-smoke"
# Registered name -> (smoke config, tracking.promote_if). The recommender's condition cannot hold: the
# fixture checks that it was not promoted, then promotes it by hand (`promote`, what `reelml promote` runs).
FAMILIES = {FRAMES: ("frames.yaml", "test_accuracy>=0"), AUTOENCODER: ("autoencoder.yaml", "test_loss>=0"),
            DIALOGUE: ("dialogue.yaml", "val_loss_second_half>=0"), RECOMMENDER: ("recommender.yaml", "test_hr_at_10>1.5")}
EXPERIMENT = "reelml-serving"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_frames):
    """The four smoke configs trained against one real `mlflow server` on 127.0.0.1, registered and promoted."""
    from training.mlflow_model import promote

    root = tmp_path_factory.mktemp("registry")
    server, uri = serve_mlflow(root)
    data = {FRAMES: sample_frames.parent, AUTOENCODER: sample_frames.parent, RECOMMENDER: root / "sample"}
    results = {}
    before = Path.cwd()
    os.chdir(root)
    try:
        for name, (config, condition) in FAMILIES.items():
            overrides = [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}", f"tracking.promote_if={condition}"]
            overrides += [f"data.sample_dir={data[name]}"] if name in data else []
            result = train(load_config(CONFIGS / "smoke" / config, overrides))
            results[name] = dataclasses.replace(result, export_dir=root / result.export_dir)
        client = mlflow.MlflowClient(uri)
        aliases = {name: dict(client.get_registered_model(name).aliases) for name in FAMILIES}
        promote(RECOMMENDER, None, "champion", uri)
        yield {"root": root, "uri": uri, "aliases_after_training": aliases, **results}
    finally:
        os.chdir(before)
        stop_mlflow_server(server)


def _client(trained):
    return mlflow.MlflowClient(trained["uri"])


def _frame_bytes(sample_frames, n=3):
    return [p.read_bytes() for p in sorted(Path(sample_frames).rglob("*.jpg"))[:n]]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_run_registers_a_version_tagged_with_its_export_and_test_metrics(trained, name):
    result = trained[name]
    version = _client(trained).get_model_version(name, "1")
    assert version.run_id == result.run_id
    assert version.tags["reelml.export_version"] == result.export_dir.name == "1"
    assert Path(version.tags["reelml.export_path"]) == result.export_dir.resolve()
    assert result.test_metrics  # test metrics (the dialogue has no test split: its report's validation ones)
    for key, value in result.test_metrics.items():
        assert float(version.tags[key]) == pytest.approx(value, rel=1e-5), key
    run = _client(trained).get_run(result.run_id)
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{result.run_id}'")
    assert [m.name for m in logged] == ["model"]


def test_the_run_is_stored_by_the_server(trained):
    client = _client(trained)
    result = trained[FRAMES]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.params["name"] == FRAMES
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1, 2]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} >= {"plots/learning_curves.png"}
    assert "export/saved_model.pb" in {a.path for a in client.list_artifacts(result.run_id, "export")}
    assert any((trained["root"] / "artifacts").rglob("saved_model.pb")), "artifacts must be stored by the server"


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
                ({"user_id": users[:2], "item_id": ["t0000", "t0001"]}, {"signature": "score"})]
    answers = _in_fresh_process(trained["uri"], f"models:/{RECOMMENDER}/1", requests)
    import tensorflow as tf

    default = tf.saved_model.load(str(rec_export)).signatures["serving_default"]
    k_spec = default.structured_input_signature[1]["k"]
    k = np.int32(4) if k_spec.shape.rank == 0 else np.full([3], 4, np.int32)
    _assert_equal(answers[0], _signature_call(rec_export, "serving_default", {"user_id": [u.encode() for u in users], "k": k}))
    _assert_equal(answers[1], _signature_call(rec_export, "score", {"user_id": [b"u0000", b"u0001"],
                                                                   "item_id": [b"t0000", b"t0001"]}))
    assert "score" in serving


def test_promote_if_promotes_when_it_holds_and_not_otherwise(trained):
    after_training = trained["aliases_after_training"]
    for name in (FRAMES, AUTOENCODER, DIALOGUE):
        assert after_training[name] == {"champion": "1"}, name
    assert after_training[RECOMMENDER] == {}
    assert str(_client(trained).get_model_version_by_alias(RECOMMENDER, "champion").version) == "1"  # by hand


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


def _predict_arguments(name, sample_frames):
    frames = sorted(Path(sample_frames).rglob("*.jpg"))[:4]
    return {FRAMES: frames, AUTOENCODER: frames, DIALOGUE: ["--prompt", "ROMEO:", "--prompt", "", "--seed", "3"],
            RECOMMENDER: ["--user", "u0000", "--user", "u0001"]}[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_predict_from_the_registry_writes_what_the_export_writes(trained, name, sample_frames, tmp_path, monkeypatch, capsys):
    from training.cli import main

    arguments = _predict_arguments(name, sample_frames)
    by_alias = run_cli("predict", f"models:/{name}@champion", *arguments, "-o", tmp_path / "alias.csv",
                       cwd=trained["root"], env={"MLFLOW_TRACKING_URI": trained["uri"]})
    assert by_alias.returncode == 0, by_alias.stderr
    monkeypatch.chdir(trained["root"])  # the export folder, predicted in this process
    assert main(["predict", str(trained[name].export_dir), *map(str, arguments), "-o", str(tmp_path / "dir.csv")]) == 0
    written = (tmp_path / "alias.csv").read_text()
    assert written == (tmp_path / "dir.csv").read_text()
    assert len(written.splitlines()) >= 3


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


def _requests(name, sample_frames):
    """`[(inputs, params)]` sent to the served model of `name`: its default signature, and another one."""
    jpegs = _frame_bytes(sample_frames)
    return {
        FRAMES: [({"images": jpegs}, None)],
        AUTOENCODER: [({"images": jpegs}, None)],
        DIALOGUE: [({"prompt": [b"ROMEO:", b"", b"To be"], "max_tokens": [12, 5, 8], "temperature": [0.8, 0.0, 1.0],
                     "top_k": [0, 3, 5], "seed": [7, 8, 9]}, None),
                   ({"text": [b"ROMEO:", b"wh"], "k": [3, 5]}, {"signature": "next_token"})],
        RECOMMENDER: [({"user_id": [b"u0000", b"u0001", b"nobody"], "k": [4, 2, 4]}, None),
                      ({"user_id": [b"u0000", b"u0001"], "item_id": [b"t0000", b"t0001"]}, {"signature": "score"})],
    }[name]


def _body(inputs, params, layout):
    """A request body as MLflow's scoring server documents it: `dataframe_split` (binary columns base64,
    text as text) or TF Serving's columnar `inputs`."""
    def cell(key, value):
        return base64.b64encode(value).decode() if key == "images" else value.decode() if isinstance(value, bytes) else value

    columns = list(inputs)
    if layout == "dataframe_split":
        rows = [[cell(k, inputs[k][i]) for k in columns] for i in range(len(inputs[columns[0]]))]
        body = {"dataframe_split": {"columns": columns, "data": rows}}
    else:
        body = {"inputs": {k: [cell(k, v) for v in inputs[k]] for k in columns}}
    return {**body, **({"params": params} if params else {})}


def _post(port, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())["predictions"]


@pytest.fixture(scope="module")
def without_reelml(tmp_path_factory, trained):
    """An environment whose Python processes cannot import reelml (a `sitecustomize` blocks it), MLflow at the server."""
    block = tmp_path_factory.mktemp("block")
    (block / "sitecustomize.py").write_text(WITHOUT_REELML)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    # `mlflow models serve` runs `uvicorn` from PATH: this interpreter's, even when its venv is not activated
    env.update(PYTHONPATH=str(block), MLFLOW_TRACKING_URI=trained["uri"],
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    check = subprocess.run([sys.executable, "-c", "import training"], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert "reelml must not be importable here" in check.stderr
    return env


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mlflow_models_serve_answers_as_the_export_without_reelml(trained, without_reelml, name, sample_frames, tmp_path):
    # Every process of the server (the CLI and its workers) starts with reelml made unimportable.
    requests = _requests(name, sample_frames)
    layouts = ["dataframe_split"] + (["inputs"] if name in (DIALOGUE, RECOMMENDER) else [])  # `inputs`: no binary
    proc, port = _serve(f"models:/{name}@champion", tmp_path, without_reelml)
    try:
        answers = [(inputs, params, _post(port, _body(inputs, params, layout))) for inputs, params in requests
                   for layout in layouts]
    finally:
        _stop(proc)
    for inputs, params, answer in answers:
        signature = (params or {}).get("signature", "serving_default")
        _assert_equal(answer, _signature_call(trained[name].export_dir, signature, inputs))


def test_mlflow_ui_shows_the_logged_model_datasets_plots_and_alias(trained):
    """MLflow's own UI, rendered by a real headless Chromium, at the run page `reelml train` prints."""
    import browser

    if reason := browser.missing():
        pytest.skip(f"no browser test here: {reason}")
    result = trained[FRAMES]
    assert result.run_page.startswith(trained["uri"] + "/#/experiments/") and result.run_id in result.run_page
    chromium = browser.Browser()
    try:
        chromium.page(result.run_page)
        chromium.wait_for_text("Logged models (1)", "Ready", "Registered models", "v1", "Datasets",
                               f"{FRAMES}-training", "Training")
        chromium.click_text("+2")  # the other datasets of the run
        chromium.wait_for_text(f"{FRAMES}-validation", f"{FRAMES}-test")

        chromium.page(result.run_page.replace("?", "/artifacts/plots/learning_curves.png?"))
        chromium.wait_for_text("plots/learning_curves.png", "confusion_matrix.png")
        assert chromium.wait_for_image(min_width=300)

        chromium.page(f"{trained['uri']}/#/models/{FRAMES}?workflowType=machine_learning")
        chromium.wait_for_text("Version 1", "Aliases", "champion")
    finally:
        chromium.close()
