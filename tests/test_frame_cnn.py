"""The frame CNN's contract: shapes, exact parameter counts, the seed architecture."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models import MODELS
from models.frame_cnn import build_frame_cnn
from training.config import load_config
from training.config.frames import BACKBONE_KEYS

from conftest import CONFIGS


def test_registry_is_a_plain_dict():
    assert MODELS["frame_cnn"] is build_frame_cnn


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (3, 150, 100, 3), (1, 20, 30, 3)])
def test_any_frame_size_gives_probabilities(shape):
    model = build_frame_cnn(num_classes=4, input_size=32, filters=(4, 8))
    probs = keras.ops.convert_to_numpy(model(np.random.uniform(0, 255, shape).astype("float32")))
    assert probs.shape == (shape[0], 4)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)


def test_frames_of_unknown_size_are_resized_only_when_needed():
    """A serving signature takes frames of any size: at the model's size they skip the resize, others are resized."""
    import tensorflow as tf

    from models.frame_cnn import ResizeIfNeeded

    resize = ResizeIfNeeded(32, 32, antialias=True)
    fn = tf.function(lambda x: resize(tf.cast(x, tf.float32)), input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, 32, 32, 3]  # static: a Flatten head works
    rng = np.random.default_rng(0)
    at_size, other = rng.integers(0, 256, (2, 32, 32, 3), np.uint8), rng.integers(0, 256, (2, 50, 40, 3), np.uint8)
    np.testing.assert_array_equal(fn(at_size).numpy(), at_size)  # untouched, not resampled
    expected = tf.image.resize(other.astype("float32"), (32, 32), antialias=True).numpy()
    np.testing.assert_allclose(fn(other).numpy(), expected, rtol=1e-5, atol=1e-3)
    model = build_frame_cnn(num_classes=3, input_size=32, filters=(4,), head="flatten")
    serve = tf.function(lambda x: model(tf.cast(x, tf.float32)), input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    assert serve(other).shape == (2, 3) and serve(at_size).shape == (2, 3)


def test_fused_batch_norm_matches_keras_batch_norm():
    """Outputs, gradients and moving statistics equal Keras' layer's, in training and in inference."""
    import tensorflow as tf

    from models.frame_cnn import FusedBatchNormalization

    x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 5, 5, 4)).astype("float32"))
    keras_bn, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    for layer in (keras_bn, fused):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, 4))
        layer.beta.assign(np.linspace(-1.0, 1.0, 4))
    weights = tf.constant(np.random.default_rng(1).normal(0, 1, x.shape).astype("float32"))
    grads = []
    for layer in (keras_bn, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)
        grads.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused(x, training=False).numpy(), keras_bn(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(fused.moving_variance.numpy(), 1.0)  # the statistics did move
    for training in (True, False):  # and the fused kernel is what ran
        graph = tf.function(lambda t: fused(t, training=training)).get_concrete_function(x).graph
        assert any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


def test_seed_architecture_is_reproduced_exactly():
    """Conv 32/64/128 3x3 ReLU + 2x2 max pool each, Flatten, Dense 1024 ReLU, Dense 10 softmax, 224x224x3."""
    cfg = load_config(CONFIGS / "seed" / "frames.yaml")
    params = cfg.model.model_dump(exclude={"name", *BACKBONE_KEYS})
    model = build_frame_cnn(num_classes=10, l2=cfg.train.l2, **params)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert sum(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers) == 3
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [(d.units, d.activation.__name__) for d in dense] == [(1024, "relu"), (10, "softmax")]
    assert not any(isinstance(l, (keras.layers.BatchNormalization, keras.layers.Dropout)) for l in model.layers)
    # 224 -conv-> 222 -pool-> 111 -> 109 -> 54 -> 52 -> 26; 26*26*128 = 86,528 features into Dense 1024.
    expected = (3 * 3 * 3 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 128 + 128) + (86528 * 1024 + 1024) + (1024 * 10 + 10)
    assert model.count_params() == expected == 88_709_194


def test_default_architecture_parameter_count():
    cfg = load_config(CONFIGS / "frames.yaml")
    model = build_frame_cnn(num_classes=6, **cfg.model.model_dump(exclude={"name", *BACKBONE_KEYS}))
    if cfg.model.test_time_flip:  # the mirror-averaging wrapper adds no weights
        model = model.classifier
    convs = sum(l.count_params() for l in model.layers if isinstance(l, keras.layers.Conv2D))
    bns = sum(l.count_params() for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    convs_per_block = cfg.model.convs_per_block
    if isinstance(convs_per_block, int):
        convs_per_block = [convs_per_block] * len(cfg.model.filters)
    widths = [3] + [f for f, n in zip(cfg.model.filters, convs_per_block) for _ in range(n)]
    assert convs == sum(9 * a * b for a, b in zip(widths, widths[1:]))  # no biases before batch norm
    assert bns == 4 * sum(widths[1:])
    assert model.count_params() == convs + bns + (widths[-1] * 6 + 6)


def test_augmentation_only_in_training():
    model = build_frame_cnn(num_classes=3, input_size=32, filters=(4,), dropout=0.0)
    x = np.random.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    a, b = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pooling"):
        build_frame_cnn(num_classes=3, pooling="median")
    with pytest.raises(ValueError, match="filters"):
        build_frame_cnn(num_classes=3, filters=())


def test_convs_per_block_can_differ_per_block():
    model = build_frame_cnn(num_classes=3, input_size=32, filters=(4, 8, 16), convs_per_block=(1, 1, 2))
    names = [l.name for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert names == ["block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2"]
    with pytest.raises(ValueError, match="one entry per block"):
        build_frame_cnn(num_classes=3, filters=(4, 8), convs_per_block=(1, 2, 3))


def test_test_time_flip_averages_a_frame_and_its_mirror_in_inference_only():
    model = build_frame_cnn(num_classes=3, input_size=32, filters=(4, 8), dropout=0.0, augment=False, test_time_flip=True)
    x = np.random.uniform(0, 255, (2, 40, 40, 3)).astype("float32")
    inner = model.classifier
    averaged = keras.ops.convert_to_numpy(model(x, training=False))
    expected = (keras.ops.convert_to_numpy(inner(x, training=False))
                + keras.ops.convert_to_numpy(inner(x[:, :, ::-1].copy(), training=False))) / 2
    np.testing.assert_allclose(averaged, expected, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x[:, :, ::-1].copy(), training=False)), averaged, rtol=1e-4)
    assert model.count_params() == inner.count_params()
