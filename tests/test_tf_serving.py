"""Every export through the path TF Serving loads it by, fed TF Serving's REST request bodies.

Each family's smoke export is trained once for the module. `tf_serving_rest.SessionModel` loads it as
`tensorflow_model_server` and `saved_model_cli run` do (a TF1 graph and session, the `serve` tag, the SignatureDef's
tensor names) and answers bodies written as TF Serving's REST API document shows them; a row-format request and a
columnar one must give what `tf.saved_model.load(...).signatures[...]` gives in-process. The last test sends the
same bodies to a real `tensorflow_model_server` when one is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config

from conftest import CONFIGS, free_port, train_export
from tf_serving_rest import SessionModel, b64, rows_to_columns, to_json

SMOKE = CONFIGS / "smoke"


@pytest.fixture(scope="module")
def exports(sample_frames, tmp_path_factory):
    """One smoke export per family, `{family: export dir}`."""
    frames = sample_frames.parent
    rec = tmp_path_factory.mktemp("serving-rec")
    return {
        "frames": train_export(tmp_path_factory.mktemp("serving-frames"), "frames.yaml", [f"data.sample_dir={frames}"]),
        "autoencoder": train_export(tmp_path_factory.mktemp("serving-ae"), "autoencoder.yaml", [f"data.sample_dir={frames}"]),
        "dialogue": train_export(tmp_path_factory.mktemp("serving-dialogue"), "dialogue.yaml"),
        "recommender": train_export(rec, "recommender.yaml", [f"data.sample_dir={rec / 'views'}"]),
    }


def _jpegs(sample_frames, n=3):
    paths = sorted((sample_frames / "test").rglob("*.jpg"))[:n]
    return [p.read_bytes() for p in paths]


def _requests(family, export_dir, sample_frames):
    """`[(signature, row-format body, columnar body, in-process kwargs)]` for every signature of a family's export.

    The bodies are written as TF Serving's REST API document shows them: JSON objects, binary data as
    `{"b64": ...}`, text as strings, one value per instance and input.
    """
    if family in ("frames", "autoencoder"):
        jpegs = _jpegs(sample_frames)
        names = ["serving_default", "classify_pixels"] if family == "frames" else \
            ["is_anomaly", "anomaly_score", "encode", "reconstruct", "analyse_pixels"]
        size = load_config(SMOKE / "frames.yaml").model.input_size
        pixels = np.stack([tf.image.resize(tf.io.decode_jpeg(j, channels=3), (size, size)).numpy().round().astype(np.uint8)
                           for j in jpegs])
        out = []
        for name in names:
            if name.endswith("pixels"):
                row = {"signature_name": name, "instances": [{"pixels": p.tolist()} for p in pixels]}
                col = {"signature_name": name, "inputs": {"pixels": pixels.tolist()}}
                out.append((name, row, col, {"pixels": tf.constant(pixels)}))
                continue
            col = {"signature_name": name, "inputs": {"images": [b64(j) for j in jpegs]}}
            named = {"signature_name": name, "instances": [{"images": b64(j)} for j in jpegs]}
            short = {"signature_name": name, "instances": [b64(j) for j in jpegs]}  # one input: a list of its values
            out += [(name, named, col, {"images": tf.constant(jpegs)}), (name, short, col, {"images": tf.constant(jpegs)})]
        return out
    if family == "dialogue":
        prompts = ["ROMEO:", "", "JULIET:"]
        gen = {"prompt": prompts, "max_tokens": [12, 0, 20], "temperature": [0.8, 0.0, 1.5], "top_k": [0, 0, 5],
               "seed": [1, 1, 2]}
        dtypes = {"prompt": tf.string, "max_tokens": tf.int32, "temperature": tf.float32, "top_k": tf.int32, "seed": tf.int64}
        nxt = {"text": prompts, "k": [5, 2, 3]}
        return [
            (sig, {"signature_name": sig, "instances": [dict(zip(columns, v)) for v in zip(*columns.values())]},
             {"signature_name": sig, "inputs": columns},
             {n: tf.constant(v, types.get(n, tf.int32)) for n, v in columns.items()})
            for sig, columns, types in [("generate", gen, dtypes), ("serving_default", gen, dtypes),
                                        ("next_token", nxt, {"text": tf.string})]
        ]
    meta = json.loads((export_dir / "assets.extra" / "reelml.json").read_text())
    assert meta["num_users"] > 2 and meta["num_items"] > 2
    loaded = tf.saved_model.load(str(export_dir))
    known = loaded.signatures["recommend"](user_id=tf.constant(["u0000"]), k=tf.constant([3]))["item_id"].numpy()[0]
    items = [i.decode() for i in known if i] + ["no such item"]
    users = ["u0000", "u0001", "no such user"]
    rec = {"user_id": users, "k": [3, 1, 5]}
    score = {"user_id": users[:len(items)], "item_id": items[:len(users)]}
    sim = {"item_id": items, "k": [2, 4, 3, 1][:len(items)]}
    return [
        (sig, {"signature_name": sig, "instances": [dict(zip(columns, v)) for v in zip(*columns.values())]},
         {"signature_name": sig, "inputs": columns},
         {n: tf.constant(v, tf.string if isinstance(v[0], str) else tf.int32) for n, v in columns.items()})
        for sig, columns in [("recommend", rec), ("score", score), ("similar_items", sim)]
    ]


def _assert_same(have: dict, want: dict):
    """The same outputs: text, IDs, integers and booleans exactly, floats to float32 round-off."""
    assert sorted(have) == sorted(want)
    for name, w in want.items():
        h = have[name]
        if h == w:
            continue
        try:
            h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
        except (TypeError, ValueError):
            raise AssertionError(f"{name}: {h!r} != {w!r}") from None
        np.testing.assert_allclose(h, w, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", ["frames", "autoencoder", "dialogue", "recommender"])
def test_row_and_columnar_requests_answer_as_the_loaded_export(family, exports, sample_frames):
    export_dir = exports[family]
    loaded = tf.saved_model.load(str(export_dir))
    model = SessionModel(export_dir)
    try:
        requests = _requests(family, export_dir, sample_frames)
        assert set(loaded.signatures) - {"serving_default"} <= {r[0] for r in requests}  # every signature
        for signature, row, col, kwargs in requests:
            want = to_json(loaded.signatures[signature](**kwargs))
            rows = model.predict(json.dumps(row))["predictions"]
            columns = model.predict(json.dumps(col))["outputs"]
            if len(want) == 1:  # one output: plain values
                (name, value), = want.items()
                rows, columns = {name: rows}, {name: columns}
            else:
                rows = rows_to_columns(rows)
            _assert_same(rows, want)
            _assert_same(columns, want)
    finally:
        model.close()


def test_every_signature_takes_one_value_per_row_for_every_input(exports):
    """TF Serving's row format needs every input to share the batch dimension: no scalar input anywhere."""
    for family, export_dir in exports.items():
        model = SessionModel(export_dir)
        try:
            for name, signature in model.signatures.items():
                for input_name, info in signature.inputs.items():
                    dims = [d.size for d in info.tensor_shape.dim]
                    assert dims and dims[0] == -1, (family, name, input_name, dims)
        finally:
            model.close()


def test_each_row_depends_on_its_own_inputs_only(exports):
    """A row's answer is the same alone as among others: per-row seed, temperature, max_tokens, top_k and k."""
    model = SessionModel(exports["dialogue"])
    try:
        rows = [{"prompt": "ROMEO:", "max_tokens": 15, "temperature": 1.0, "top_k": 0, "seed": 4},
                {"prompt": "JULIET:", "max_tokens": 3, "temperature": 0.0, "top_k": 0, "seed": 9},
                {"prompt": "", "max_tokens": 25, "temperature": 2.0, "top_k": 3, "seed": 4}]
        together = model.predict({"signature_name": "generate", "instances": rows})["predictions"]
        alone = [model.predict({"signature_name": "generate", "instances": [r]})["predictions"][0] for r in rows]
        assert together == alone
        assert [p["num_tokens"] for p in together] == [15, 3, 25]
        assert [len(p["text"]) for p in together] == [15, 3, 25]  # characters: one per token
        nxt = model.predict({"signature_name": "next_token", "instances": [{"text": "ROMEO:", "k": 4},
                                                                           {"text": "", "k": 1}]})["predictions"]
        assert [len(p["token"]) for p in nxt] == [4, 4]  # the batch's largest k; beyond a row's own: "" and 0
        assert nxt[1]["token"][1:] == ["", "", ""] and nxt[1]["probability"][1:] == [0.0, 0.0, 0.0]
        assert nxt[0]["probability"][0] > 0 and "" not in nxt[0]["token"]
    finally:
        model.close()
    model = SessionModel(exports["recommender"])
    try:
        rec = model.predict({"signature_name": "recommend", "instances": [{"user_id": "1", "k": 4},
                                                                          {"user_id": "2", "k": 2}]})["predictions"]
        alone = model.predict({"signature_name": "recommend", "instances": [{"user_id": "2", "k": 2}]})["predictions"][0]
        assert rec[1]["item_id"][:2] == alone["item_id"] and rec[1]["item_id"][2:] == ["", ""]
        assert rec[1]["score"][2:] == [0.0, 0.0] and all(rec[0]["item_id"])
    finally:
        model.close()


NO_SERVER = "tensorflow_model_server is not installed: not in the package registries this project can reach"


def _post(url, body, timeout=120):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None, reason=NO_SERVER)
@pytest.mark.parametrize("family", ["frames", "autoencoder", "dialogue", "recommender"])
def test_real_tensorflow_model_server_answers_the_same(family, exports, sample_frames, tmp_path):
    export_dir = exports[family]
    rest, grpc = free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    # (tensorflow_model_server binds 0.0.0.0 and has no flag to bind one address: tensorflow/serving#1969.)
    server = subprocess.Popen(["tensorflow_model_server", f"--port={grpc}", f"--rest_api_port={rest}",
                               f"--model_name={family}", f"--model_base_path={export_dir.parent.resolve()}"],
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{rest}/v1/models/{family}"
    try:
        deadline = time.monotonic() + 300  # generous: only a bound on a server that never comes up
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                status = json.loads(urllib.request.urlopen(base, timeout=10).read())
                if status["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, IndexError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        model = SessionModel(export_dir)
        try:
            for _, row, col, _ in _requests(family, export_dir, sample_frames):
                for body in (row, col):
                    have, want = _post(base + ":predict", body), model.predict(body)
                    key = "predictions" if "instances" in body else "outputs"
                    h, w = have[key], want[key]
                    if key == "predictions" and isinstance(w[0], dict):
                        h, w = rows_to_columns(h), rows_to_columns(w)
                    elif not isinstance(w, dict):
                        h, w = {"value": h}, {"value": w}
                    _assert_same(h, w)
        finally:
            model.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_a_per_row_input_of_another_length_is_refused_by_name(exports):
    """Columnar bodies may give one value for every row; any other length than the batch's fails, naming the input."""
    model = SessionModel(exports["recommender"])
    try:
        one = model.predict({"signature_name": "recommend", "inputs": {"user_id": ["u0000", "u0001"], "k": [2]}})
        assert [len(ids) for ids in one["outputs"]["item_id"]] == [2, 2]
        with pytest.raises(tf.errors.InvalidArgumentError, match="`k`: expected one value per row"):
            model.predict({"signature_name": "recommend", "inputs": {"user_id": ["u0000", "u0001", "x"], "k": [2, 3]}})
    finally:
        model.close()
    model = SessionModel(exports["dialogue"])
    try:
        with pytest.raises(tf.errors.InvalidArgumentError, match="`seed`: expected one value per row"):
            model.predict({"signature_name": "generate", "inputs": {
                "prompt": ["a", "b", "c"], "max_tokens": [3], "temperature": [0.5], "top_k": [0], "seed": [1, 2]}})
    finally:
        model.close()
