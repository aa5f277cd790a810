"""The MLflow side of an export: the pyfunc model of a run, its registered version, aliases and dataset inputs.

After a run exports, `log_model` logs the export as an MLflow pyfunc model at the run's `model`
(code: `training/mlflow_pyfunc.py`, which needs MLflow and TensorFlow only; the SavedModel is its
artifact), registers it under the config's `name` and tags the version with the export folder and the
held-out metrics (test, and the task report's). `tracking.promote_if` then sets the alias `champion` when its condition holds.
`reelml promote` sets an alias by hand; `resolve_model_uri` turns `models:/NAME@ALIAS` into a local
export folder for `reelml predict`.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from training.errors import UserError

ARTIFACT_NAME = "model"
DEFAULT_ALIAS = "champion"
_PYFUNC_FILE = Path(__file__).with_name("mlflow_pyfunc.py")
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


# ---------------------------------------------------------------------------------------------- the model


def _text_or_bytes(value):
    """Text as `str` (a `string` column, sent as plain JSON), anything else as `bytes` (a `binary` one, sent as base64)."""
    value = bytes(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _example_frame(inputs: dict, rows: int = 2):
    """A signature's verification inputs as a DataFrame of at most `rows` rows; a scalar input is repeated per row."""
    import pandas as pd

    batch = [v for v in inputs.values() if np.ndim(v) > 0]
    n = min(rows, min(len(v) for v in batch)) if batch else 1
    columns = {}
    for key, value in inputs.items():
        if np.ndim(value) == 0:
            columns[key] = [value.item() if isinstance(value, np.generic) else value] * n
        elif isinstance(value, np.ndarray) and value.ndim > 1:
            columns[key] = [value[i].tolist() for i in range(n)]  # nested lists: an MLflow array column
        else:
            columns[key] = [_text_or_bytes(v) if isinstance(v, (bytes, np.bytes_)) else v for v in list(value)[:n]]
    return pd.DataFrame(columns)


def _default_inputs(examples: dict, loaded) -> dict:
    """The verification inputs of `serving_default`, or of the signature that takes the same inputs (its twin)."""
    from training.mlflow_pyfunc import DEFAULT_SIGNATURE

    if DEFAULT_SIGNATURE in examples:
        return examples[DEFAULT_SIGNATURE]
    wanted = set(loaded.signatures[DEFAULT_SIGNATURE].structured_input_signature[1])
    for inputs in examples.values():
        if wanted <= set(inputs):
            return {k: inputs[k] for k in wanted}
    raise ValueError(f"no verification inputs fit `{DEFAULT_SIGNATURE}` (inputs {sorted(wanted)})")


def _signature(examples: dict, default_frame, default_output):
    """The model signature: every signature's inputs as optional columns, the default signature's outputs, the
    `signature` param. Optional: each request sends the inputs of the one signature it calls."""
    import logging

    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from training.mlflow_pyfunc import DEFAULT_SIGNATURE

    params = {"signature": DEFAULT_SIGNATURE}
    signature = infer_signature(default_frame, default_output, params=params)
    columns = {}
    quiet = logging.getLogger("mlflow.models.signature")
    level, quiet.level = quiet.level, logging.ERROR  # an input it cannot describe is left out, not warned about
    try:
        for name in [DEFAULT_SIGNATURE, *sorted(examples)]:
            frame = default_frame if name == DEFAULT_SIGNATURE else _example_frame(examples[name])
            schema = signature.inputs if name == DEFAULT_SIGNATURE else infer_signature(frame).inputs
            for spec in schema.inputs:
                if spec.name and not isinstance(spec.type, AnyType):
                    # JSON and pandas give 64-bit numbers: declared so, and cast to the signature's dtype in `predict`
                    kind = {DataType.integer: DataType.long, DataType.float: DataType.double}.get(
                        spec.type, spec.type) if isinstance(spec.type, DataType) else spec.type
                    columns.setdefault(spec.name, ColSpec(kind, spec.name, required=False))
    finally:
        quiet.level = level
    return ModelSignature(Schema(list(columns.values())), signature.outputs, signature.params)


def _already_logged(run_id: str, experiment_id: str):
    import mlflow

    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{ARTIFACT_NAME}'")
    ready = [m for m in found if str(m.status).endswith("READY")]  # one killed while logging is logged again
    return ready[0] if ready else None


def log_model(cfg, task, data, export_dir: Path, run_id: str, metrics: dict) -> dict:
    """Logs `export_dir` as the run's pyfunc model, registers and tags it, and promotes it if `promote_if` holds.

    A resumed run that had already logged (or registered) its model does not log it twice.

    Returns:
        `{"model_uri": ..., "version": registered version or None, "promoted": alias or None}`.
    """
    import mlflow
    import tensorflow as tf

    from training import mlflow_pyfunc

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the check of the input example downloads
    run = mlflow.get_run(run_id)
    logged = _already_logged(run_id, run.info.experiment_id)
    if logged is not None:
        model_uri = logged.model_uri
    else:
        with warnings.catch_warnings():  # the signature is given: MLflow's hints on inferring one do not apply
            warnings.filterwarnings("ignore", message=".*Hint: Inferred schema", category=UserWarning)
            model = mlflow_pyfunc.SavedModelSignatures()
            model.load_context(type("Context", (), {"artifacts": {"saved_model": str(export_dir)}})())
            examples = task.verification_inputs(cfg, data)
            example = _example_frame(_default_inputs(examples, model.loaded))
            signature = _signature(examples, example, model.predict(None, example))
            params = {"signature": mlflow_pyfunc.DEFAULT_SIGNATURE}
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME, python_model=str(_PYFUNC_FILE), artifacts={"saved_model": str(export_dir)},
                signature=signature, input_example=(example, params),
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"tensorflow=={tf.__version__}"],
                tags={"reelml.export_version": export_dir.name},
            )
        model_uri = info.model_uri
    result = {"model_uri": model_uri, "version": None, "promoted": None}
    if not cfg.tracking.register_model:
        return result
    version = _register(cfg.name, model_uri, run_id, export_dir, metrics)
    result["version"] = version
    print(f"Registered model `{cfg.name}` version {version} (models:/{cfg.name}/{version})")
    if cfg.tracking.promote_if:
        from training.config.sections import parse_condition

        metric, op, threshold = parse_condition(cfg.tracking.promote_if)
        if metric not in metrics:
            print(f"tracking.promote_if `{cfg.tracking.promote_if}`: the run has no metric `{metric}` "
                  f"(it has {', '.join(sorted(metrics)) or 'none'}); version {version} not promoted")
        elif _COMPARE[op](metrics[metric], threshold):
            set_alias(cfg.name, DEFAULT_ALIAS, version)
            result["promoted"] = DEFAULT_ALIAS
            print(f"Promoted `{cfg.name}` version {version} to alias `{DEFAULT_ALIAS}` ({metric} = {metrics[metric]:.4f} "
                  f"{op} {threshold:g}): models:/{cfg.name}@{DEFAULT_ALIAS}")
        else:
            print(f"Not promoted: {metric} = {metrics[metric]:.4f}, tracking.promote_if wants {op} {threshold:g}")
    return result


def _register(name: str, model_uri: str, run_id: str, export_dir: Path, metrics: dict) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:  # registered before a kill: the resumed run keeps that version
        version = str(max(int(v.version) for v in existing))
    else:
        version = str(mlflow.register_model(model_uri, name).version)
    tags = {"reelml.export_version": export_dir.name, "reelml.export_path": str(export_dir.resolve()),
            "reelml.run_id": run_id}
    tags.update({k: f"{v:.6g}" for k, v in metrics.items()})  # held-out metrics: test, and the report's (validation)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


# ---------------------------------------------------------------------------------------------- aliases


def _version_of(client, name: str, version: str | None) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise UserError(f"`{name}`: no registered model of that name in the MLflow registry "
                        "(train with tracking.register_model: true first)") from None
    versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    if not versions:
        raise UserError(f"`{name}`: the registered model has no versions")
    if version is None:
        return str(max(versions))
    if not str(version).isdigit() or int(version) not in versions:
        raise UserError(f"--version {version}: model `{name}` has no such version "
                        f"(it has {', '.join(map(str, sorted(versions)))})")
    return str(int(version))


def open_registry(uri: str, flag: str) -> None:
    """Points MLflow at `uri`; a SQLite file that does not exist is an error (MLflow would create an empty one)."""
    import mlflow

    from training import tracking

    tracking.check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().is_file():
        raise UserError(f"{flag} `{uri}`: no such MLflow database here; run where the model was trained, or set {flag}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)


def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def promote(name: str, version: str | None, alias: str, uri: str) -> str:
    """`reelml promote`: points `alias` of registered model `name` at `version` (default: the newest)."""
    import mlflow

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", alias) or re.fullmatch(r"[vV]\d+|latest", alias):
        raise UserError(f"--alias `{alias}`: expected letters, digits, `_` or `-` (not `latest` or `v<number>`)")
    open_registry(uri, "--tracking-uri (or $MLFLOW_TRACKING_URI)")
    version = _version_of(mlflow.MlflowClient(), name, version)
    set_alias(name, alias, version)
    return version


# ---------------------------------------------------------------------------------------------- models:/ URIs


def resolve_model_uri(uri: str, tracking_uri: str) -> Path:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the SavedModel folder of its downloaded artifacts.

    The artifacts are cached under `.reelml-models/<hash of the model's source>` in the working directory
    (or a temporary folder where that is not writable), so a second predict does not download again.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))", uri)
    if not match:
        raise UserError(f"`{uri}`: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match.groups()
    open_registry(tracking_uri, "$MLFLOW_TRACKING_URI")
    client = mlflow.MlflowClient()
    try:
        if alias is not None:
            try:
                entry = client.get_model_version_by_alias(name, alias)
            except MlflowException:
                _version_of(client, name, None)  # names an unknown model
                raise UserError(f"`{uri}`: model `{name}` has no alias `{alias}` (set it: reelml promote {name} --alias {alias})") from None
        else:
            entry = client.get_model_version(name, _version_of(client, name, version))
    except MlflowException as e:
        raise UserError(f"`{uri}`: {str(e).splitlines()[0]}") from None
    key = hashlib.sha256(f"{tracking_uri}|{name}|{entry.version}|{entry.source}".encode()).hexdigest()[:16]
    cache = Path(".reelml-models")
    try:
        cache.mkdir(exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "reelml-models"
        cache.mkdir(exist_ok=True)
    target = cache / key
    if not _saved_model_in(target):
        download = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{entry.version}", dst_path=str(download))
        if target.exists():
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        download.rename(target)
    found = _saved_model_in(target)
    if found is None:
        raise UserError(f"`{uri}` (version {entry.version}): its artifacts hold no SavedModel; it was not logged by reelml")
    return found


def _saved_model_in(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p.parent for p in folder.rglob("saved_model.pb"))
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------- dataset inputs


def data_sources(cfg) -> dict[str, str]:
    """`{context: source}` of a run's data, from its config alone (nothing is read): training, validation, test.

    A source is a local path (resolved), `tfds:NAME/SPLIT`, or `reelml:TASK/SOURCE` for data made in code.
    """
    d = cfg.data
    kind = getattr(d, "source", "sample")
    if kind == "tfds":
        train = f"tfds:{d.tfds_name}" + (f"/{d.tfds_train_split}" if getattr(d, "tfds_train_split", None) else "")
        test = f"tfds:{d.tfds_name}/{d.tfds_test_split}" if getattr(d, "tfds_test_split", None) else train
    else:
        keys = ("train_dir", "path", "video_labels", "sample_table_dir" if kind == "sample_table" else "", "sample_dir")
        location = next((getattr(d, k) for k in keys if k and getattr(d, k, None)), None)
        train = str(Path(location).resolve()) if location else f"reelml:{cfg.task}/{kind}"
        held_out = next((getattr(d, k) for k in ("test_dir", "test_path", "video_test_labels") if getattr(d, k, None)), None)
        test = str(Path(held_out).resolve()) if held_out else train
    return {"training": train, "validation": train, "test": test}


def _source(uri: str):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if uri.startswith("tfds:"):  # the dataset's catalog page: a link in MLflow's UI
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{uri[5:].split('/')[0]}")
    if uri.startswith("reelml:"):  # made by reelml's code (a built-in sample), no file to point at
        from mlflow.data.code_dataset_source import CodeDatasetSource

        return CodeDatasetSource({"reelml.data": uri})
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources, the same class
        warnings.simplefilter("ignore")
        return resolve_dataset_source(uri)


def datasets(cfg, data) -> list[tuple[object, str]]:
    """`[(MLflow dataset, context)]` for the splits the run has; the digest is the run's data fingerprint.

    A `MetaDataset`: a source and a digest, nothing materialised."""
    from mlflow.data.meta_dataset import MetaDataset

    present = {"training": data.train is not None, "validation": data.validation is not None, "test": data.test is not None}
    out = []
    for context, source in data_sources(cfg).items():
        if present[context]:
            name = source[5:] if source.startswith("tfds:") else f"{cfg.name}-{context}"
            out.append((MetaDataset(_source(source), name=name, digest=str(data.fingerprint)[:36]), context))
    return out
