"""NeuMF's start from trained GMF and MLP runs (the NCF paper's pretraining): find their exports, check them, copy the weights.

A run is named by its export folder or its MLflow run id (`model.pretrain_gmf`,
`model.pretrain_mlp`); both must be recommender exports of the right model,
trained on the same data and split (the data fingerprint) as this run.
"""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow as tf

from models.ncf import neumf_weights_from_pretrained
from training.errors import UserError


def load_pretrained(cfg, model, data) -> None:
    """Sets a NeuMF model's weights from the GMF and MLP runs of `model.pretrain_gmf` and `model.pretrain_mlp`.

    Args:
        cfg: the run config (`cfg.model.pretrain_*`, `cfg.tracking.uri` for run ids).
        model: the NeuMF `keras.Model`, built; its variables are assigned in place.
        data: this run's `Data`: its fingerprint must match the pretrained runs'.

    Raises:
        UserError: a run that is not found, not a GMF/MLP recommender export, from
            other data, or with other `model.factors` / `model.mlp_layers`.
    """
    m = cfg.model
    gmf = pretrained_weights(cfg, m.pretrain_gmf, "gmf", "model.pretrain_gmf", data.fingerprint)
    mlp = pretrained_weights(cfg, m.pretrain_mlp, "mlp", "model.pretrain_mlp", data.fingerprint)
    weights = neumf_weights_from_pretrained(gmf, mlp, m.pretrain_alpha)
    for variable in model.weights:
        value = weights.get(variable.path)
        if value is None or tuple(value.shape) != tuple(variable.shape):
            raise UserError(
                f"model.pretrain_gmf / model.pretrain_mlp: `{variable.path}` has shape {tuple(variable.shape)} here but "
                f"{None if value is None else tuple(value.shape)} in the pretrained runs; use the same model.factors "
                "and model.mlp_layers as they did"
            )
        variable.assign(value)
    print(f"NeuMF initialised from GMF {m.pretrain_gmf} and MLP {m.pretrain_mlp}", flush=True)


def pretrained_weights(cfg, ref: str, want: str, key: str, fingerprint: str) -> dict:
    """The variables of a trained GMF or MLP, from its export folder or its MLflow run id.

    Args:
        cfg: the run config (`cfg.tracking.uri` resolves run ids).
        ref: an export folder (`exports/<name>` or a version in it) or a 32-hex-digit MLflow run id.
        want: the model the export must hold, `gmf` or `mlp`.
        key: the config key that named `ref`, for messages.
        fingerprint: this run's data fingerprint, which the export's must equal.

    Returns:
        `{variable path: array}`, e.g. `"gmf_user_embedding/embeddings"`.
    """
    from training.export import read_metadata, resolve_export_dir

    if Path(ref).exists():
        export_dir = resolve_export_dir(ref)
    elif re.fullmatch(r"[0-9a-f]{32}", ref):
        import mlflow

        from training.tracking import resolve_uri

        try:
            tags = mlflow.MlflowClient(resolve_uri(cfg.tracking.uri)).get_run(ref).data.tags
        except Exception as e:  # MLflow raises its own exception types
            raise UserError(f"{key} `{ref}`: no such MLflow run ({type(e).__name__})") from None
        if "export.path" not in tags:
            raise UserError(f"{key} `{ref}`: that MLflow run has no export (export.path tag)")
        export_dir = resolve_export_dir(tags["export.path"])
    else:
        raise UserError(f"{key} `{ref}`: neither an export folder nor an MLflow run id (32 hex digits)")
    meta = read_metadata(export_dir)
    model_name = (meta.get("model") or {}).get("name")
    if meta.get("task") != "recommender" or model_name != want:
        raise UserError(f"{key} `{ref}`: expected a {want} recommender export, found task {meta.get('task')!r} model {model_name!r}")
    if meta.get("data_fingerprint") != fingerprint:
        raise UserError(
            f"{key} `{ref}`: was trained on other data or another split (fingerprint {meta.get('data_fingerprint')} vs "
            f"{fingerprint}); train GMF, MLP and NeuMF on the same data with the same data.split_seed"
        )
    loaded = tf.saved_model.load(str(export_dir))
    return {v.name.rsplit(":", 1)[0]: v.numpy() for v in loaded.variables}
