"""The dialogue language model: Embedding -> stacked SimpleRNN, GRU or LSTM -> next-token logits.

A character- or word-level model of scripts. The contract:

    input   int32 [B, T]          token indices (0 is the unknown token)
    output  float32 [B, T, V]     logits of the next token at every position

Training reads whole windows through the Keras RNN layers. Serving and
generation step one token at a time through the same layers' cells
(`initial_states`, `advance`, `next_logits`), carrying the recurrent state, so a generated token
costs one cell call per layer instead of a pass over the whole text. The cells
are plain Keras ops: a GRU or LSTM stepped this way never takes the cuDNN-only
path that Keras picks for whole sequences on a GPU, so an export traced on a GPU
machine still loads on CPU.

Stateful training (truncated backpropagation through time with the state
carried across windows) runs the same layers through `stream_model`, which
takes the recurrent states in and gives them back out.

Layer names (`embedding`, `rnn_0`, `rnn_1`, ..., `logits`) are part of the
contract: `advance`, `next_logits` and `stream_model` find the layers by them.
"""

from __future__ import annotations

import keras
from keras import layers, ops

RNN_LAYERS = {"simple_rnn": layers.SimpleRNN, "gru": layers.GRU, "lstm": layers.LSTM}


def build_dialogue_rnn(vocab_size, cell="simple_rnn", units=(512,), embedding_dim=64, activation="tanh", dropout=0.0,
                       l2=0.0, seed=None):
    """Builds the dialogue language model.

    Args:
        vocab_size: int, tokens in the vocabulary, the unknown token (index 0) included.
        cell: `"simple_rnn"` (the default the product asks for), `"gru"` or `"lstm"`.
        units: sequence of ints, units of each stacked recurrent layer, bottom first.
        embedding_dim: int, size of the token embeddings.
        activation: `"tanh"` or `"relu"`, activation of a SimpleRNN (GRU and LSTM keep their own).
        dropout: float, dropout between stacked recurrent layers and before the output layer (training only).
        l2: float, L2 penalty on the recurrent and output kernels.
        seed: int or None, seed of the initialisers and the dropout.

    Returns:
        A `keras.Model` mapping int32 token indices `[B, T]` to float32 logits `[B, T, vocab_size]`.

    Example:

    >>> model = build_dialogue_rnn(65, cell="gru", units=[32])
    >>> tuple(model(ops.zeros((2, 10), dtype="int32")).shape)
    (2, 10, 65)
    """
    if cell not in RNN_LAYERS:
        raise ValueError(f"cell: expected one of {sorted(RNN_LAYERS)}, got {cell!r}")

    def offset(i):
        return None if seed is None else seed + i

    regularizer = keras.regularizers.L2(l2) if l2 else None
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab_size, embedding_dim, name="embedding",
                         embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=offset(0)))(tokens)
    for i, n in enumerate(units):
        if dropout and i > 0:
            x = layers.Dropout(dropout, seed=offset(100 + i), name=f"dropout_{i}")(x)
        options = {"activation": activation} if cell == "simple_rnn" else {}
        # return_state: `stream_model` reads the final states of the same layer; this graph keeps the sequence.
        x = RNN_LAYERS[cell](
            n, return_sequences=True, return_state=True, name=f"rnn_{i}", kernel_regularizer=regularizer,
            kernel_initializer=keras.initializers.GlorotUniform(seed=offset(1 + 2 * i)),
            recurrent_initializer=keras.initializers.Orthogonal(seed=offset(2 + 2 * i)), **options,
        )(x)[0]
    if dropout:
        x = layers.Dropout(dropout, seed=offset(100), name="dropout_out")(x)
    # float32 logits under mixed precision: the softmax over the vocabulary needs the range.
    logits = layers.Dense(vocab_size, name="logits", dtype="float32", kernel_regularizer=regularizer,
                          kernel_initializer=keras.initializers.GlorotUniform(seed=offset(99)))(x)
    return keras.Model(tokens, logits, name=f"dialogue_{cell}")


def recurrent_layers(model) -> list:
    """The model's recurrent layers, bottom first."""
    return [layer for layer in model.layers if layer.name.startswith("rnn_")]


def state_sizes(model) -> list:
    """The size of each recurrent state, one list per layer (LSTM: [h, c]; others: [h])."""
    sizes = []
    for layer in recurrent_layers(model):
        size = layer.cell.state_size
        sizes.append(list(size) if isinstance(size, (list, tuple)) else [size])
    return sizes


def initial_states(model, batch_size) -> list:
    """Zero recurrent states for `batch_size` sequences: one list per layer (LSTM: [h, c]; others: [h])."""
    return [[ops.zeros((batch_size, size), dtype=layer.cell.compute_dtype) for size in sizes]
            for layer, sizes in zip(recurrent_layers(model), state_sizes(model))]


def stream_model(model) -> keras.Model:
    """The same layers, with the recurrent states as inputs and outputs: for carrying them across windows.

    Args:
        model: a model built by `build_dialogue_rnn`.

    Returns:
        A `keras.Model` from `[tokens [B, T], *states]` to `[logits [B, T, V], *states]`, the states flattened
        bottom layer first, as `state_sizes` lists them. Its weights are the model's own.
    """
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    # In the layer's compute dtype (float16 under mixed precision), as its cell keeps them.
    inputs = [[keras.Input((size,), dtype=layer.cell.compute_dtype, name=f"{layer.name}_state_{j}")
               for j, size in enumerate(sizes)]
              for layer, sizes in zip(recurrent_layers(model), state_sizes(model))]
    names = {layer.name for layer in model.layers}
    x = model.get_layer("embedding")(tokens)
    outputs = []
    for i, (layer, states) in enumerate(zip(recurrent_layers(model), inputs)):
        if f"dropout_{i}" in names:
            x = model.get_layer(f"dropout_{i}")(x)
        x, *final = layer(x, initial_state=states)
        outputs += final
    if "dropout_out" in names:
        x = model.get_layer("dropout_out")(x)
    logits = model.get_layer("logits")(x)
    flat = [state for states in inputs for state in states]
    return keras.Model([tokens, *flat], [logits, *outputs], name=f"{model.name}_streams")


def advance(model, tokens, states):
    """Reads one token per sequence: the top layer's output and the new states.

    Args:
        model: a model built by `build_dialogue_rnn`.
        tokens: int32 `[B]`, the current token of each sequence.
        states: the states before it, as `initial_states` returns them.

    Returns:
        `(output, states)`: the top recurrent layer's output `[B, units[-1]]`, and the states after `tokens`.
    """
    x = model.get_layer("embedding")(tokens)
    new_states = []
    for layer, state in zip(recurrent_layers(model), states):
        x, state = layer.cell(x, list(state), training=False)
        new_states.append(list(state))
    return x, new_states


def next_logits(model, output):
    """float32 logits `[B, vocab_size]` of the next token, from the top layer's output."""
    return ops.cast(model.get_layer("logits")(output), "float32")
