"""Autoencoders: a convolutional one for frames, a dense one for feature vectors (or small frames).

An autoencoder squeezes its input through a small code and rebuilds it. The
code is an embedding (similar shots have close codes); the reconstruction
error says how unlike the training data an input is (frame QC).

Both builders return a `keras.Model` made of two sub-models, `encoder` (input
-> code) and `decoder` (code -> reconstruction), so the code is reachable on
its own for serving. Inputs are already scaled: frames as pixels in [0, 1],
feature vectors standardised; the reconstruction is in the same units.

Denoising: with `noise_stddev > 0` the encoder starts with Gaussian noise that
is active in training only, so the model learns to rebuild the clean input
from a noisy one (the loss target stays the clean input).
"""

from __future__ import annotations

import math

import keras
from keras import layers


def _dense(units, activation, l2, name):
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return layers.Dense(units, activation=activation, kernel_regularizer=regularizer, name=name)


def build_conv_autoencoder(
    input_shape=(64, 64, 3),
    code_size=64,
    filters=(32, 64, 128, 256),
    convs_per_block=2,
    kernel_size=3,
    batch_norm=True,
    noise_stddev=0.0,
    code_activation="linear",
    output_activation="sigmoid",
    l2=0.0,
    seed=None,
):
    """Builds the convolutional autoencoder for frames.

    The encoder is one block per entry of `filters`: a stride-2 convolution
    (halving the map) and `convs_per_block - 1` more convolutions, each with
    batch norm and a leaky ReLU; then Flatten and a Dense code. The decoder
    mirrors it with stride-2 transposed convolutions and ends in a 3x3
    convolution back to the input's channels.

    Args:
        input_shape: tuple `(height, width, channels)`; height and width must
            be divisible by `2 ** len(filters)`.
        code_size: int, size of the code (the embedding).
        filters: sequence of int, filters of each encoder block (the decoder
            uses them in reverse).
        convs_per_block: int, convolutions per block, the first one strided.
        kernel_size: int, square kernel size of every convolution.
        batch_norm: bool, BatchNormalization after each convolution.
        noise_stddev: float, standard deviation of the Gaussian noise added to
            the input in training (denoising autoencoder); 0 disables it.
        code_activation: `"linear"` or `"relu"`, activation of the code layer.
        output_activation: `"sigmoid"` (pixels in [0, 1]) or `"linear"`.
        l2: float, L2 penalty on every kernel (0 disables it).
        seed: int or None, seed of the noise layer.

    Returns:
        A `keras.Model` mapping `(batch, height, width, channels)` to a
        reconstruction of the same shape, in float32, with sub-models
        `encoder` (to `(batch, code_size)`) and `decoder`.

    Example:

    >>> model = build_conv_autoencoder((32, 32, 3), code_size=16, filters=(8, 16))
    >>> model(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 32, 32, 3)
    >>> model.get_layer("encoder")(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 16)
    """
    height, width, channels = input_shape
    if not filters:
        raise ValueError("`filters` must name at least one block, got an empty list")
    factor = 2 ** len(filters)
    if height % factor or width % factor:
        raise ValueError(f"`input_shape` {tuple(input_shape)}: height and width must be divisible by 2 ** len(filters) = {factor}")
    regularizer = keras.regularizers.L2(l2) if l2 else None

    def conv(x, f, strides, transpose, name):
        conv_layer = layers.Conv2DTranspose if transpose else layers.Conv2D
        x = conv_layer(f, kernel_size, strides=strides, padding="same", use_bias=not batch_norm,
                       kernel_regularizer=regularizer, name=name)(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.LeakyReLU(0.2, name=f"{name}_act")(x)

    inputs = keras.Input(input_shape, name="pixels")
    x = layers.GaussianNoise(noise_stddev, seed=seed, name="denoising_noise")(inputs) if noise_stddev else inputs
    for i, f in enumerate(filters):
        for j in range(convs_per_block):
            x = conv(x, f, 2 if j == 0 else 1, False, f"enc{i}_conv{j}")
    x = layers.Flatten(name="flatten")(x)
    code = _dense(code_size, code_activation, l2, "code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    code_in = keras.Input((code_size,), name="code")
    small = (height // factor, width // factor, filters[-1])
    y = _dense(math.prod(small), None, l2, "expand")(code_in)
    y = layers.Reshape(small, name="unflatten")(y)
    for i, f in enumerate(reversed(filters)):
        for j in range(convs_per_block):
            y = conv(y, f, 2 if j == 0 else 1, j == 0, f"dec{i}_conv{j}")
    out = layers.Conv2D(channels, 3, padding="same", activation=output_activation, dtype="float32", name="reconstruction")(y)
    decoder = keras.Model(code_in, out, name="decoder")
    return keras.Model(inputs, decoder(encoder(inputs)), name="conv_autoencoder")


def build_dense_autoencoder(
    input_shape=(32,),
    code_size=32,
    hidden_units=(),
    decoder_units=None,
    noise_stddev=0.0,
    code_activation="linear",
    output_activation="linear",
    l2=0.0,
    seed=None,
):
    """Builds the dense autoencoder for feature vectors (frames are flattened first).

    Encoder: `hidden_units` Dense ReLU layers, then a Dense code. Decoder:
    `decoder_units` Dense ReLU layers (default: `hidden_units` reversed), then
    a Dense layer back to the input size, reshaped to `input_shape`.

    Args:
        input_shape: tuple, `(features,)` or a frame's `(height, width, channels)`.
        code_size: int, size of the code (the embedding).
        hidden_units: sequence of int, hidden layers of the encoder.
        decoder_units: sequence of int or None, hidden layers of the decoder;
            None mirrors `hidden_units`.
        noise_stddev: float, standard deviation of the Gaussian noise added to
            the input in training (denoising autoencoder); 0 disables it.
        code_activation: `"linear"` or `"relu"`, activation of the code layer.
        output_activation: `"linear"` (standardised features) or `"sigmoid"`
            (values in [0, 1], such as pixels).
        l2: float, L2 penalty on every kernel (0 disables it).
        seed: int or None, seed of the noise layer.

    Returns:
        A `keras.Model` mapping `(batch, *input_shape)` to a reconstruction of
        the same shape, in float32, with sub-models `encoder` (to
        `(batch, code_size)`) and `decoder`.

    Example:

    >>> model = build_dense_autoencoder((20,), code_size=4, hidden_units=(16,))
    >>> model(keras.ops.zeros((3, 20))).shape
    (3, 20)
    """
    input_shape = tuple(input_shape)
    size = math.prod(input_shape)
    inputs = keras.Input(input_shape, name="features")
    x = layers.GaussianNoise(noise_stddev, seed=seed, name="denoising_noise")(inputs) if noise_stddev else inputs
    if len(input_shape) > 1:
        x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden_units):
        x = _dense(units, "relu", l2, f"enc{i}")(x)
    code = _dense(code_size, code_activation, l2, "code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    code_in = keras.Input((code_size,), name="code")
    y = code_in
    for i, units in enumerate(reversed(hidden_units) if decoder_units is None else decoder_units):
        y = _dense(units, "relu", l2, f"dec{i}")(y)
    y = layers.Dense(size, activation=output_activation, dtype="float32", kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                     name="reconstruction")(y)
    if len(input_shape) > 1:
        y = layers.Reshape(input_shape, name="unflatten")(y)
    decoder = keras.Model(code_in, y, name="decoder")
    return keras.Model(inputs, decoder(encoder(inputs)), name="dense_autoencoder")
