"""TF Serving's REST predict API, answered in-process through the path `tensorflow_model_server` loads an export by.

`SessionModel` loads a SavedModel as TF Serving (and `saved_model_cli run`) does: a `tf.compat.v1` graph and session,
`tf.compat.v1.saved_model.loader.load(sess, ["serve"], dir)`, then each SignatureDef's input and output tensor
names. `predict(body)` takes a request body of TF Serving's REST API document
(https://www.tensorflow.org/tfx/serving/api_rest, "Predict API") and answers as the server would:

- row format `{"signature_name": ..., "instances": [...]}`: each instance an object of named inputs, or, where the
  signature has one input, that input's value itself; every input's rows are stacked along a new first dimension.
  The answer is `{"predictions": [...]}`, one object of named outputs per instance, or the plain value where the
  signature has one output.
- columnar format `{"signature_name": ..., "inputs": {...}}` (or `"inputs": value` for a single input): each input's
  value is its whole tensor. The answer is `{"outputs": {...}}`, or `{"outputs": value}` for a single output.
- `{"b64": "..."}` is binary data (a string tensor's element); other strings are UTF-8 text. String outputs whose
  name ends in `_bytes` come back as `{"b64": ...}`, others as text. `signature_name` defaults to `serving_default`.

The answer goes through `json.dumps`/`json.loads`, as over the wire.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import tensorflow as tf


def b64(data: bytes) -> dict:
    """Binary data as TF Serving's REST API writes it: `{"b64": base64 text}`."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def _is_value(instance) -> bool:
    """A row-format instance that is a value, not an object of named inputs (a `{"b64": ...}` object is a value)."""
    return not isinstance(instance, dict) or set(instance) == {"b64"}


def _decode(value, dtype: np.dtype):
    """JSON value -> nested lists of Python values of `dtype` (b64 objects and text -> bytes for strings)."""
    if isinstance(value, list):
        return [_decode(v, dtype) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"expected a value or {{'b64': ...}}, got an object with keys {sorted(value)}")
        return base64.b64decode(value["b64"])
    if dtype == object:
        return value.encode("utf-8") if isinstance(value, str) else value
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.get(value, value)


def _encode(array: np.ndarray, name: str):
    """An output tensor (or one row of it) as JSON: lists, text or b64 for strings, bools, numbers."""
    if array.dtype == object or array.dtype.kind == "S":
        flat = [b64(v) if name.endswith("_bytes") else v.decode("utf-8") for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def to_json(outputs: dict) -> dict:
    """Signature outputs `{name: array}` as the columnar answer's `outputs` object (for comparing with `predict`)."""
    return json.loads(json.dumps({name: _encode(np.asarray(value), name) for name, value in outputs.items()}))


class SessionModel:
    """A SavedModel loaded through TF1's loader into a graph and session, answering TF Serving REST request bodies.

    Args:
        export_dir: the SavedModel directory (`exports/<name>/<version>`).
    """

    def __init__(self, export_dir):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(export_dir))
        self.signatures = dict(meta_graph.signature_def)

    def close(self):
        self.session.close()

    def _run(self, signature, inputs: dict) -> dict:
        """Feeds `{input name: JSON value}` to the SignatureDef's tensors; returns `{output name: array}`."""
        if set(inputs) != set(signature.inputs):
            raise ValueError(f"inputs {sorted(inputs)}: the signature takes {sorted(signature.inputs)}")
        feed = {}
        for name, info in signature.inputs.items():
            dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
            feed[info.name] = np.array(_decode(inputs[name], np.dtype(dtype)), dtype=dtype)
        fetches = {name: info.name for name, info in signature.outputs.items()}
        return self.session.run(fetches, feed_dict=feed)

    def predict(self, body) -> dict:
        """Answers one predict request body (a JSON string or its decoded object), as TF Serving's REST API does."""
        request = json.loads(body) if isinstance(body, (str, bytes)) else json.loads(json.dumps(body))
        signature = self.signatures[request.get("signature_name", "serving_default")]
        names = sorted(signature.inputs)
        if ("instances" in request) == ("inputs" in request):
            raise ValueError("a request has either `instances` (row format) or `inputs` (columnar format)")
        if "instances" in request:
            instances = request["instances"]
            if all(_is_value(i) for i in instances) and len(names) == 1:
                columns = {names[0]: instances}
            else:
                columns = {name: [instance[name] for instance in instances] for name in names}
            outputs = self._run(signature, columns)
            sizes = {name: len(value) for name, value in outputs.items()}
            if set(sizes.values()) != {len(instances)}:
                raise ValueError(f"row format: every output needs one row per instance, got {sizes}")
            encoded = {name: _encode(value, name) for name, value in outputs.items()}  # each a list of rows
            if len(encoded) == 1:
                answer = {"predictions": next(iter(encoded.values()))}
            else:
                answer = {"predictions": [{name: rows[i] for name, rows in encoded.items()} for i in range(len(instances))]}
        else:
            inputs = request["inputs"]
            if not isinstance(inputs, dict) or _is_value(inputs):
                if len(names) != 1:
                    raise ValueError(f"columnar format: a single value, but the signature takes {names}")
                inputs = {names[0]: inputs}
            outputs = self._run(signature, inputs)
            encoded = {name: _encode(value, name) for name, value in outputs.items()}
            answer = {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
        return json.loads(json.dumps(answer))


def rows_to_columns(predictions: list) -> dict:
    """A row answer's `predictions` (objects of named outputs) as a columnar answer's `outputs` object."""
    return {name: [p[name] for p in predictions] for name in predictions[0]}
