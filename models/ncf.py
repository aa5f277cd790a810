"""Neural collaborative filtering (He et al., "Neural Collaborative Filtering", WWW 2017).

Every builder here makes a model with the same contract, so training, ranking
evaluation and serving treat them alike:

    inputs  {"user": int32 [B], "item": int32 [B, C]}   user index, C candidate item indices per user
    output  float32 [B, C]                               probability that the user interacts with each candidate

Training feeds each positive with its sampled negatives as one row of
candidates; evaluation feeds each user's held-out item with its 99 negatives;
serving feeds the whole catalogue. One call scores them all.

- `build_gmf`: generalised matrix factorisation, the element-wise product of a
  user and an item embedding, weighted by the output layer;
- `build_mlp`: user and item embeddings concatenated and passed through a
  tower of ReLU layers;
- `build_neumf`: both, side by side, fused by one output layer; it can start
  from trained GMF and MLP weights (`neumf_weights_from_pretrained`);
- `build_mf`: matrix factorisation with user, item and global biases, the dot
  product that Rendle et al. (RecSys 2020) found hard to beat with a learned
  similarity;
- `build_seed_cf`: the seed's collaborative filter, user one-hot -> Dense ReLU
  -> Dense sigmoid over every item, read at the candidate items.

Layer names are part of the contract: pretraining and `item_embeddings` find
weights by them.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


def _inputs():
    return keras.Input((), dtype="int32", name="user"), keras.Input((None,), dtype="int32", name="item")


def _embedding(count, size, name, l2, seed):
    # The paper initialises embeddings from N(0, 0.01).
    return layers.Embedding(
        count, size, name=name, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed),
        embeddings_regularizer=keras.regularizers.L2(l2) if l2 else None,
    )


def _gmf_vector(user, item, num_users, num_items, factors, l2, seed):
    u = _embedding(num_users, factors, "gmf_user_embedding", l2, seed)(user)  # [B, F]
    v = _embedding(num_items, factors, "gmf_item_embedding", l2, None if seed is None else seed + 1)(item)  # [B, C, F]
    return ops.expand_dims(u, 1) * v


def _mlp_vector(user, item, num_users, num_items, mlp_layers, l2, dense_l2, seed):
    half = mlp_layers[0] // 2
    u = _embedding(num_users, half, "mlp_user_embedding", l2, None if seed is None else seed + 2)(user)
    v = _embedding(num_items, half, "mlp_item_embedding", l2, None if seed is None else seed + 3)(item)
    u = ops.expand_dims(u, 1) * ops.ones_like(v[..., :1])  # the user beside each of its C candidates
    x = ops.concatenate([u, v], axis=-1)
    for i, units in enumerate(mlp_layers[1:]):
        x = layers.Dense(units, activation="relu", name=f"mlp_dense_{i}",
                         kernel_regularizer=keras.regularizers.L2(dense_l2) if dense_l2 else None)(x)
    return x


def _prediction(x, dense_l2):
    # float32 output under mixed precision: probabilities near 0 and 1 matter for ranking.
    # The sigmoid comes last, so a loss can read its logits (Keras does, for binary cross-entropy).
    logit = layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction", dtype="float32",
                         kernel_regularizer=keras.regularizers.L2(dense_l2) if dense_l2 else None)(x)
    return layers.Activation("sigmoid", dtype="float32", name="probability")(ops.squeeze(logit, -1))


def build_gmf(num_users, num_items, factors=8, embedding_l2=0.0, l2=0.0, seed=None):
    """Builds GMF: sigmoid(h . (p_u * q_i)).

    Args:
        num_users: int, users in the vocabulary (indices 0..num_users-1).
        num_items: int, items in the catalogue.
        factors: int, embedding size (the predictive factors).
        embedding_l2: float, L2 penalty on the embeddings.
        l2: float, L2 penalty on the output kernel.
        seed: int or None, seed of the initialisers.

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.

    Example:
        >>> m = build_gmf(10, 20, factors=4)
        >>> m({"user": np.array([1, 2]), "item": np.array([[0, 5, 7], [1, 2, 3]])}).shape
        TensorShape([2, 3])
    """
    user, item = _inputs()
    x = _gmf_vector(user, item, num_users, num_items, factors, embedding_l2, seed)
    return keras.Model({"user": user, "item": item}, _prediction(x, l2), name="gmf")


class _GlobalBias(layers.Layer):
    """One learned scalar added to every score."""

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def call(self, x):
        return x + ops.cast(self.bias, x.dtype)


def build_mf(num_users, num_items, factors=64, embedding_l2=0.0, l2=0.0, seed=None):
    """Builds biased matrix factorisation: sigmoid(p_u . q_i + b_u + b_i + b).

    The factors use GMF's layer names (`gmf_user_embedding`, `gmf_item_embedding`), so `item_embeddings`
    and `similar_items` read them the same way.

    Args:
        num_users: int, users in the vocabulary.
        num_items: int, items in the catalogue.
        factors: int, embedding size.
        embedding_l2: float, L2 penalty on the factors and biases (Rendle et al. tune it: the main lever).
        l2: float, unused (MF has no Dense kernels); accepted like every builder's.
        seed: int or None, seed of the initialisers.

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.

    Example:
        >>> m = build_mf(10, 20, factors=4)
        >>> m({"user": np.array([1, 2]), "item": np.array([[0, 5, 7], [1, 2, 3]])}).shape
        TensorShape([2, 3])
    """
    del l2
    user, item = _inputs()
    p = _embedding(num_users, factors, "gmf_user_embedding", embedding_l2, seed)(user)  # [B, F]
    q = _embedding(num_items, factors, "gmf_item_embedding", embedding_l2, None if seed is None else seed + 1)(item)
    regularizer = keras.regularizers.L2(embedding_l2) if embedding_l2 else None
    b_user = layers.Embedding(num_users, 1, embeddings_initializer="zeros", embeddings_regularizer=regularizer,
                              name="user_bias")(user)  # [B, 1]
    b_item = layers.Embedding(num_items, 1, embeddings_initializer="zeros", embeddings_regularizer=regularizer,
                              name="item_bias")(item)  # [B, C, 1]
    logits = ops.sum(ops.expand_dims(p, 1) * q, axis=-1) + b_user + ops.squeeze(b_item, -1)
    logits = _GlobalBias(name="global_bias")(logits)
    # float32 output under mixed precision: probabilities near 0 and 1 matter for ranking.
    out = layers.Activation("sigmoid", dtype="float32", name="prediction")(logits)
    return keras.Model({"user": user, "item": item}, out, name="mf")


def build_mlp(num_users, num_items, mlp_layers=(64, 32, 16, 8), embedding_l2=0.0, l2=0.0, seed=None):
    """Builds the NCF MLP: user and item embeddings (half of `mlp_layers[0]` each) through ReLU layers.

    Args:
        num_users: int, users in the vocabulary.
        num_items: int, items in the catalogue.
        mlp_layers: sequence of int; the first is the concatenated embedding
            size, each further entry one ReLU Dense layer.
        embedding_l2: float, L2 penalty on the embeddings.
        l2: float, L2 penalty on the Dense kernels.
        seed: int or None, seed of the initialisers.

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.
    """
    user, item = _inputs()
    x = _mlp_vector(user, item, num_users, num_items, mlp_layers, embedding_l2, l2, seed)
    return keras.Model({"user": user, "item": item}, _prediction(x, l2), name="mlp")


def build_neumf(num_users, num_items, factors=8, mlp_layers=(64, 32, 16, 8), embedding_l2=0.0, l2=0.0, seed=None):
    """Builds NeuMF: the GMF vector and the MLP tower's output, concatenated, into one sigmoid.

    Args:
        num_users: int, users in the vocabulary.
        num_items: int, items in the catalogue.
        factors: int, GMF embedding size.
        mlp_layers: sequence of int, the MLP part (see `build_mlp`).
        embedding_l2: float, L2 penalty on the embeddings.
        l2: float, L2 penalty on the Dense kernels.
        seed: int or None, seed of the initialisers.

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.
    """
    user, item = _inputs()
    g = _gmf_vector(user, item, num_users, num_items, factors, embedding_l2, seed)
    m = _mlp_vector(user, item, num_users, num_items, mlp_layers, embedding_l2, l2, seed)
    x = ops.concatenate([g, m], axis=-1)
    return keras.Model({"user": user, "item": item}, _prediction(x, l2), name="neumf")


def build_seed_cf(num_users, num_items, mlp_layers=(10,), l2=0.0, seed=None):
    """Builds the seed's collaborative filter: user one-hot -> Dense ReLU -> Dense sigmoid over every item.

    A multi-label model over the whole catalogue; it is read at the candidate
    items, so it trains, evaluates and serves like the NCF models.

    Args:
        num_users: int, users in the vocabulary (the one-hot width).
        num_items: int, items in the catalogue (the output width).
        mlp_layers: sequence of int, hidden ReLU Dense layers (the seed: `[10]`).
        l2: float, L2 penalty on the Dense kernels.
        seed: int or None, seed of the initialisers.

    Returns:
        A `keras.Model` from `{"user": [B], "item": [B, C]}` to probabilities `[B, C]`.
    """
    user, item = _inputs()
    x = ops.one_hot(user, num_users)
    reg = keras.regularizers.L2(l2) if l2 else None
    for i, units in enumerate(mlp_layers):
        x = layers.Dense(units, activation="relu", name=f"seed_dense_{i}", kernel_regularizer=reg)(x)
    every_item = layers.Dense(num_items, activation="sigmoid", name="seed_items", dtype="float32", kernel_regularizer=reg)(x)
    scores = ops.take_along_axis(every_item, item, axis=1)
    return keras.Model({"user": user, "item": item}, scores, name="seed_cf")


def item_embeddings(model):
    """The learned item vectors `[num_items, d]` that `similar_items` compares by cosine.

    GMF and MLP: their item embedding; NeuMF: both, each L2-normalised, side by
    side; the seed model: each item's column of the output layer.
    """
    names = {layer.name for layer in model.layers}
    if "seed_items" in names:
        return ops.transpose(model.get_layer("seed_items").kernel)
    parts = [model.get_layer(n).embeddings for n in ("gmf_item_embedding", "mlp_item_embedding") if n in names]
    if len(parts) == 1:
        return parts[0]
    return ops.concatenate([p / (ops.norm(p, axis=-1, keepdims=True) + 1e-12) for p in parts], axis=-1)


def neumf_weights_from_pretrained(gmf: dict, mlp: dict, alpha: float = 0.5) -> dict:
    """NeuMF weights from trained GMF and MLP weights (the paper's pretraining).

    Args:
        gmf: `{variable path: array}` of a trained GMF model, e.g.
            `"gmf_user_embedding/embeddings"`.
        mlp: the same for a trained MLP model.
        alpha: weight of the GMF output layer; the MLP's gets `1 - alpha`.

    Returns:
        `{variable path: array}` for every NeuMF variable.
    """
    out = {k: v for k, v in gmf.items() if k.startswith("gmf_")}
    out.update({k: v for k, v in mlp.items() if k.startswith("mlp_")})
    out["prediction/kernel"] = np.concatenate([alpha * gmf["prediction/kernel"], (1 - alpha) * mlp["prediction/kernel"]], 0)
    out["prediction/bias"] = alpha * gmf["prediction/bias"] + (1 - alpha) * mlp["prediction/bias"]
    return out
