"""The MLflow pyfunc model of a reelml export: a SavedModel called through one of its signatures.

MLflow logs this file as the model's code (models from code), so loading and serving the model needs
MLflow, NumPy, pandas and TensorFlow only: nothing of reelml is imported here. The SavedModel is the
model's artifact `saved_model`; `predict` calls the signature that `params["signature"]` names
(default `serving_default`) with the columns of its input converted to that signature's inputs, by
name and dtype:

    model = mlflow.pyfunc.load_model("models:/frames@champion")
    model.predict(pd.DataFrame({"images": [jpeg_bytes]}))               # serving_default
    model.predict({"pixels": pixels}, params={"signature": "classify_pixels"})

An input whose signature shape is a scalar (`()`) takes the column's first value. Outputs come back as
`{output name: numpy array}`, strings as Python `str` where they are valid UTF-8.
"""

from __future__ import annotations

import base64

import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


def _column(model_input, name):
    if isinstance(model_input, pd.DataFrame):
        return model_input[name].tolist() if name in model_input.columns else None
    if isinstance(model_input, dict):
        return model_input.get(name)
    raise TypeError(f"expected a pandas DataFrame or a dict of columns, got {type(model_input).__name__}")


def _as_bytes(value):
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"b64"}:  # TF Serving's way of sending binary data
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_as_bytes(v) for v in value]
    return str(value).encode("utf-8")


def _to_tensor(values, spec: tf.TensorSpec):
    """One input column as the tensor `spec` takes: strings as bytes, numbers in its dtype, a scalar if it is one."""
    if spec.dtype == tf.string:
        values = _as_bytes(values) if not isinstance(values, (list, tuple, np.ndarray)) else [_as_bytes(v) for v in values]
        array = np.array(values, dtype=object)
    else:
        if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple, np.ndarray)):
            values = np.stack([np.asarray(v) for v in values])
        array = np.asarray(values).astype(spec.dtype.as_numpy_dtype)
    if spec.shape.rank == 0 and array.ndim > 0:  # a per-request scalar sent as a column: its first value
        array = array.reshape(-1)[0]
    elif spec.shape.rank is not None and array.ndim == spec.shape.rank + 1 and array.shape[0] == 1:
        array = array[0]  # `{"inputs": {name: [...]}}`: MLflow makes it one row whose cell is the whole batch
    return tf.constant(array, dtype=spec.dtype)


def _from_tensor(tensor):
    array = tensor.numpy()
    if array.dtype == object:
        try:
            flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.reshape(-1)]
        except UnicodeDecodeError:  # binary, e.g. an encoded image
            return array
        return np.array(flat, dtype=object).reshape(array.shape)
    return array


class SavedModelSignatures(mlflow.pyfunc.PythonModel):
    """Loads the SavedModel artifact with `tf.saved_model.load`; predicts through a signature chosen per request."""

    def load_context(self, context):
        self.loaded = tf.saved_model.load(context.artifacts["saved_model"])

    # `pd.DataFrame`: a hint MLflow validates nothing by (a dict of columns is welcome too); the logged model
    # signature is what requests are checked against. Without a hint MLflow warns on every load.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        name = (params or {}).get("signature") or DEFAULT_SIGNATURE
        if name not in self.loaded.signatures:
            raise ValueError(f"no signature {name!r}; this model has {', '.join(sorted(self.loaded.signatures))}")
        signature = self.loaded.signatures[name]
        _, specs = signature.structured_input_signature
        inputs = {}
        for key, spec in specs.items():
            values = _column(model_input, key)
            if values is None:
                raise ValueError(f"signature {name!r} takes input {key!r}, which the request does not have")
            inputs[key] = _to_tensor(values, spec)
        return {key: _from_tensor(value) for key, value in signature(**inputs).items()}


mlflow.models.set_model(SavedModelSignatures())
